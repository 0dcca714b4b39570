"""`torchrun -m recis.cli train` end to end: sharded training from a YAML config, global
metrics, and a rank killed mid-run that torchrun restarts from the last checkpoint."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import distributed_worker as w  # noqa: E402

sys.path.pop(0)


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """The same config twice: uninterrupted, and with rank 1 killed after step 5."""
    from recis.io import generate_ctr

    tmp = tmp_path_factory.mktemp("cli")
    generate_ctr(tmp / "data", num_train=2000, num_eval=900, files=2, seed=3)
    plain = w.cli_config(tmp, "plain", tmp / "data")
    killed = w.cli_config(tmp, "killed", tmp / "data")
    torchrun = [w.TORCHRUN, "--nproc-per-node", "2"]
    outs = w.run_all(
        [
            w.spawn([*torchrun, "--master-port", w.free_port(), "-m", "recis.cli", "train", plain]),
            w.spawn(
                [
                    *torchrun,
                    # c10d rendezvous: each restart is a new round with fresh store keys (the
                    # static one can hand restarted ranks the dead attempt's gloo addresses)
                    "--rdzv-backend",
                    "c10d",
                    "--rdzv-endpoint",
                    f"127.0.0.1:{w.free_port()}",
                    "--rdzv-id",
                    "killed",
                    "--max-restarts",
                    "1",
                    w.WORKER,
                    "cli",
                    "train",
                    killed,
                ],
                env=w.worker_env(
                    RECIS_TEST_DIE_AT_STEP="5", RECIS_TEST_DIE_MARKER=str(tmp / "died")
                ),
            ),
        ],
        timeout=400,
    )
    return tmp, outs


def test_torchrun_cli_trains_and_logs_once(cli_runs):
    tmp, outs = cli_runs
    assert outs[0].count("evaluation:") == 1  # rank 0 reports, rank 1 stays quiet
    records = [json.loads(x) for x in (tmp / "plain" / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    assert train_steps == list(range(1, 9))  # once each: only rank 0 logs
    assert all(np.isfinite(r["loss"]) for r in records if r["split"] == "train")


def test_eval_auc_is_global(cli_runs):
    """eval.json's AUC equals the AUC of the final model over the whole eval set."""
    from recis import metrics
    from recis.config import load_config
    from recis.io import ParquetReader

    tmp, _ = cli_runs
    config = tmp / "plain.yaml"
    model = w.final_model(tmp / "plain", config).eval()
    cfg = load_config(config)
    probs, labels = [], []
    with torch.no_grad():
        for batch in ParquetReader(cfg.data.eval, cfg.data.schema_, 300):
            probs.append(torch.sigmoid(model(batch)["click"]).numpy())
            labels.append(batch.labels["click"].numpy())
    expected = metrics.auc(np.concatenate(probs), np.concatenate(labels))
    got = json.loads((tmp / "plain" / "eval.json").read_text())
    assert got["click/auc"] == pytest.approx(expected, abs=1e-6)
    assert np.isfinite(expected)


def test_killed_rank_restarts_to_the_same_model(cli_runs):
    tmp, outs = cli_runs
    assert (tmp / "died").exists(), "the fault was not injected"
    assert "resumed from" in outs[1] and "at step 4" in outs[1]
    a = w.final_model(tmp / "plain", tmp / "plain.yaml").state_dict()
    b = w.final_model(tmp / "killed", tmp / "killed.yaml").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    ea = json.loads((tmp / "plain" / "eval.json").read_text())
    eb = json.loads((tmp / "killed" / "eval.json").read_text())
    assert ea == pytest.approx(eb, abs=1e-6)
