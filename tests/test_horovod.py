"""Horovod (horovodrun --gloo): ranks started and dense gradients reduced by Horovod,
embeddings exchanged over a torch.distributed group built from Horovod's rank and size.
Horovod is built by `make install`; these tests do not skip."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import distributed_worker as w  # noqa: E402

sys.path.pop(0)
HOROVODRUN = [w.BIN / "horovodrun", "-np", "2", "-H", "localhost:2", "--gloo"]
KINDS = ["table_wise", "row_wise", "column_wise"]


@pytest.fixture(scope="module")
def horovod_runs(tmp_path_factory):
    """The worker on 2 Horovod ranks, and `recis train --launcher horovod` on a small config,
    side by side."""
    from recis.synthetic import generate_ctr

    tmp = tmp_path_factory.mktemp("hvd")
    (tmp / "w2").mkdir()
    generate_ctr(tmp / "data", num_train=2000, num_eval=900, files=2, seed=3)
    config = w.cli_config(tmp, "cli", tmp / "data")
    outs = w.run_all(
        [
            w.spawn(
                [*HOROVODRUN, sys.executable, w.WORKER, tmp / "w2", "--kinds", ",".join(KINDS)]
                + ["--launcher", "horovod"]
            ),
            w.spawn(
                [*HOROVODRUN, w.BIN / "recis", "train", config, "--launcher", "horovod"]
                + ["--set", "train.max_steps=6"]
            ),
        ]
    )
    return tmp, outs


@pytest.mark.parametrize("kind", KINDS)
def test_horovod_two_ranks_match_single_process(horovod_runs, kind):
    tmp, _ = horovod_runs
    ref = w.single_process_reference()
    got = torch.load(tmp / "w2" / f"{kind}.pt", weights_only=True)
    assert got["losses"] == pytest.approx(ref["losses"], abs=1e-5)
    for k in ref["state"]:
        torch.testing.assert_close(got["state"][k], ref["state"][k], atol=1e-5, rtol=1e-4)
    w.assert_trained(got["state"])


def test_horovod_cli_trains(horovod_runs):
    tmp, outs = horovod_runs
    assert outs[1].count("evaluation:") == 1
    records = [json.loads(x) for x in (tmp / "cli" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, 7))
    result = json.loads((tmp / "cli" / "eval.json").read_text())
    assert 0.0 < result["click/logloss"] < 1.0
    state = w.final_model(tmp / "cli", tmp / "cli.yaml").state_dict()
    assert all(torch.isfinite(v).all() for v in state.values())


def test_launcher_horovod_without_horovod_says_how(monkeypatch):
    from recis.distributed import init_distributed
    from recis.errors import ConfigError

    monkeypatch.setitem(sys.modules, "horovod", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "horovod.torch", None)
    with pytest.raises(ConfigError, match="make horovod"):
        init_distributed("horovod")
