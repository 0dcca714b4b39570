"""`torchrun -m recis.cli train` end to end on the hashed engine (one table split by id,
three kept whole; mapper state in every checkpoint): sharded training from a YAML config, global
metrics, a rank killed in the second epoch that torchrun restarts from the last checkpoint
at the exact row, a resume at another world size, and `recis eval` of the sharded
checkpoint in one process and under torchrun.

The train split has 601 rows: with 2 ranks of 100-row batches rank 0's shard makes 3
batches and rank 1's 4 (the last of 1 row), so an epoch is 3 steps, 3 epochs are 9, and
rank 1 must drop its tail batch each epoch for the ranks' epochs to stay aligned.
"""

from __future__ import annotations

import json
import shutil
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
    """The same config twice: uninterrupted, and with rank 1 killed after step 5 (epoch 2,
    restarted from step-4); then the uninterrupted run's step-4 checkpoint resumed by one
    rank, and its final checkpoint evaluated by `recis eval` under torchrun."""
    from recis.synthetic import generate_ctr

    root = tmp_path_factory.mktemp("cli")
    generate_ctr(root / "data", num_train=601, num_eval=900, files=2, seed=3)
    torchrun = [w.TORCHRUN, "--nproc-per-node", "2"]
    tmp = root / "run"
    tmp.mkdir()

    def train_both() -> list:
        # the hashed engine (the default), one table split by id and three kept whole: its
        # mapper state must survive too
        plain = w.cli_config(tmp, "plain", root / "data", embedding="hashed")
        killed = w.cli_config(tmp, "killed", root / "data", embedding="hashed")
        return [
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
        ]

    def eval_and_shrink() -> list:
        # a copy of the uninterrupted run as it was after step 4, resumed by one rank
        shrunk = tmp / "shrunk"
        shutil.rmtree(shrunk, ignore_errors=True)
        shutil.copytree(tmp / "plain", shrunk)
        for ck in (shrunk / "checkpoints").iterdir():
            if ck.name != "step-4":
                shutil.rmtree(ck)
        (shrunk / "metrics.jsonl").unlink()
        plain = tmp / "plain.yaml"
        return [
            w.spawn(
                [*torchrun, "--master-port", w.free_port(), "-m", "recis.cli", "eval", plain]
                + ["--checkpoint", tmp / "plain" / "checkpoints" / "final"]
                + ["--set", f"run_dir={tmp / 'eval2'}"]
            ),
            w.spawn(
                [w.TORCHRUN, "--nproc-per-node", "1", "--master-port", w.free_port()]
                + ["-m", "recis.cli", "train", plain, "--resume", shrunk]
            ),
        ]

    # no retry: a rank that dies by a signal (the SIGABRT of read-ahead threads alive at
    # exit, fixed in recis.io.prefetch) fails the test
    outs = w.run_all(train_both(), timeout=400)
    outs += w.run_all(eval_and_shrink(), timeout=400)
    return tmp, outs


def _train_steps(run_dir: Path) -> list[int]:
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if r["split"] == "train"]


def test_torchrun_cli_trains_and_logs_once(cli_runs):
    tmp, outs = cli_runs
    assert outs[0].count("evaluation:") == 1  # rank 0 reports, rank 1 stays quiet
    records = [json.loads(x) for x in (tmp / "plain" / "metrics.jsonl").read_text().splitlines()]
    # once each (only rank 0 logs); 3 epochs of 3 steps: no epoch cut short by a rank's tail
    assert _train_steps(tmp / "plain") == list(range(1, 10))
    assert [r["epoch"] for r in records if r["split"] == "train"] == [0] * 3 + [1] * 3 + [2] * 3
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


def test_killed_rank_resumes_at_the_exact_row(cli_runs):
    """The resumed attempt's logged losses (steps 5-9, epochs 2 and 3) are the uninterrupted
    run's: every rank continued at the row after its last checkpointed batch."""
    tmp, _ = cli_runs
    plain = [json.loads(x) for x in (tmp / "plain" / "metrics.jsonl").read_text().splitlines()]
    killed = [json.loads(x) for x in (tmp / "killed" / "metrics.jsonl").read_text().splitlines()]
    loss = {r["step"]: r["loss"] for r in plain if r["split"] == "train"}
    resumed = {r["step"]: r["loss"] for r in killed if r["split"] == "train"}  # last wins
    assert sorted(resumed) == list(range(1, 10))
    assert [resumed[s] for s in range(5, 10)] == pytest.approx(
        [loss[s] for s in range(5, 10)], abs=1e-6
    )


def test_resume_at_another_world_size_restarts_the_epoch(cli_runs):
    """2-rank step-4 checkpoint (epoch 2, one batch in) resumed by 1 rank: the model
    reshards, the epoch restarts from its first batch (said on stdout), and the run trains
    epochs 2 and 3 whole: 7 batches of 100 of the 601 rows each, steps 5..18."""
    tmp, outs = cli_runs
    out = outs[3]
    assert "saved by 2 ranks, this run has 1" in out and "epoch 1 restarts" in out, out[-3000:]
    assert "resumed from" in out and "at step 4" in out
    assert _train_steps(tmp / "shrunk") == list(range(5, 19))
    assert (tmp / "shrunk" / "checkpoints" / "final" / "meta.json").is_file()


def test_eval_of_a_distributed_checkpoint(cli_runs):
    """`recis eval --checkpoint <DCP folder>` in one process and under torchrun (2 ranks)
    reports the AUC and logloss the distributed training wrote to eval.json."""
    from recis.config import load_config
    from recis.distributed import run

    tmp, outs = cli_runs
    want = json.loads((tmp / "plain" / "eval.json").read_text())
    cfg = load_config(tmp / "plain.yaml", [f"run_dir={tmp / 'eval1'}"])
    one = run.evaluate(cfg, tmp / "plain" / "checkpoints" / "final", "none")
    assert one["click/auc"] == pytest.approx(want["click/auc"], abs=1e-6)
    assert one["click/logloss"] == pytest.approx(want["click/logloss"], abs=1e-6)
    printed = dict(line.split() for line in outs[2].splitlines() if line.startswith("  click/"))
    assert outs[2].count("evaluation:") == 1  # rank 0 only
    assert float(printed["click/auc"]) == pytest.approx(want["click/auc"], abs=1e-4)
    assert float(printed["click/logloss"]) == pytest.approx(want["click/logloss"], abs=1e-4)
