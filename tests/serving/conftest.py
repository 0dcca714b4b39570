"""A tiny trained DLRM run (the default example, scaled down), shared by the serving tests."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def dlrm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``run_dir`` of examples/dlrm_synthetic.yaml trained 8 steps on 2000 synthetic rows
    (eval: 600 rows), with its data under the same temporary folder."""
    import torch

    from recis.cli import main

    base = tmp_path_factory.mktemp("serving")
    run = base / "run"
    small = [
        f"run_dir={run}",
        f"data.path={base / 'data'}",
        "data.synthetic.num_train=2000",
        "data.synthetic.num_eval=600",
        "data.synthetic.files=1",
        "data.batch_size=250",
        "data.eval_batch_size=256",
        "threads=1",
        "train.progress=false",
        "train.max_steps=8",
        "train.checkpoint_every=4",
    ]
    args = [a for s in small for a in ("--set", s)]
    threads = torch.get_num_threads()
    assert main(["train", str(ROOT / "examples" / "dlrm_synthetic.yaml"), *args]) == 0
    torch.set_num_threads(threads)
    return run
