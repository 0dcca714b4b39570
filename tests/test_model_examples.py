"""`recis train examples/<model>.yaml` runs for every model-zoo example (tiny sizes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recis.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.parametrize(
    "example, metric",
    [
        ("hhft_synthetic.yaml", "click/auc"),
        ("deepfm_synthetic.yaml", "click/auc"),
        ("two_tower_synthetic.yaml", "click/auc"),
        ("deepbow_synthetic.yaml", "relevant/auc"),
    ],
)
def test_example_trains(tmp_path, example, metric) -> None:
    run_dir = tmp_path / "run"
    rc = main(
        [
            "train",
            str(ROOT / "examples" / example),
            "--set",
            f"data.path={tmp_path / 'data'}",
            "--set",
            f"run_dir={run_dir}",
            "--set",
            "data.synthetic.num_train=1000",
            "--set",
            "data.synthetic.num_eval=400",
            "--set",
            "data.synthetic.files=1",
            "--set",
            "data.batch_size=128",
            "--set",
            "train.max_steps=3",
            "--set",
            "train.progress=false",
        ]
    )
    assert rc == 0
    result = json.loads((run_dir / "eval.json").read_text())
    assert 0.0 <= result[metric] <= 1.0
    assert (run_dir / "checkpoints" / "final").exists()
