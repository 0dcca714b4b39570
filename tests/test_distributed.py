"""Multi-process training over gloo, launched the way users launch it (torchrun).

The reference is the single-process :class:`recis.train.Trainer` on the whole global
batches; 2 ranks, each on half of every global batch, must reach the same losses and
parameters for every sharding type. Checkpoints written by 2 ranks load into 1 and back.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import distributed_worker as w  # noqa: E402  (the workers' shared data, model and launch helpers)

sys.path.pop(0)
KINDS = ["table_wise", "row_wise", "column_wise", "C0=data_parallel+C1=row_wise+auto"]


@pytest.fixture(scope="module")
def reference():
    return w.single_process_reference()


@pytest.fixture(scope="module")
def torchrun_runs(tmp_path_factory):
    """2 ranks (torchrun) and 1 rank (env set by hand) side by side; each saves a
    checkpoint and then loads the other's into a different sharding."""
    root = tmp_path_factory.mktemp("dist")

    def start(tmp: Path) -> list:
        (tmp / "w1").mkdir()
        (tmp / "w2").mkdir()
        one = w.single_rank_env()
        procs = [
            w.spawn(
                [
                    str(w.TORCHRUN),
                    "--nproc-per-node",
                    "2",
                    "--master-port",
                    str(w.free_port()),
                    str(w.WORKER),
                    str(tmp / "w2"),
                    "--kinds",
                    ",".join(KINDS),
                    "--save-ckpt",
                    str(tmp / "ck2"),
                    "--load-ckpt",
                    str(tmp / "ck1"),
                    "--load-kind",
                    "column_wise",
                ]
            ),
            w.spawn(
                [
                    sys.executable,
                    str(w.WORKER),
                    str(tmp / "w1"),
                    "--kinds",
                    "row_wise",
                    "--save-ckpt",
                    str(tmp / "ck1"),
                    "--load-ckpt",
                    str(tmp / "ck2"),
                    "--load-kind",
                    "table_wise",
                ],
                env=one,
            ),
        ]
        return procs

    return w.run_all_in(start, root)


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)  # result files: tensors, numbers, dicts


def assert_same_state(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("kind", KINDS)
def test_two_ranks_match_single_process(torchrun_runs, reference, kind):
    ref = reference
    got = load(torchrun_runs / "w2" / f"{kind}.pt")
    assert got["losses"] == pytest.approx(ref["losses"], abs=1e-5)
    assert_same_state(got["state"], ref["state"])
    w.assert_trained(got["state"])


def test_one_rank_dmp_matches_single_process(torchrun_runs, reference):
    ref = reference
    got = load(torchrun_runs / "w1" / "row_wise.pt")
    assert got["losses"] == pytest.approx(ref["losses"], abs=1e-5)
    assert_same_state(got["state"], ref["state"])


def test_reshard_on_load_both_ways(torchrun_runs):
    """2-rank table-wise checkpoint -> 1 rank table-wise, and 1-rank row-wise -> 2 ranks
    column-wise: each restores the saved model exactly, and the next step (which uses the
    restored optimizer state) equals the saving run's own next step."""
    w1, w2 = torchrun_runs / "w1", torchrun_runs / "w2"
    into_one, into_two = load(w1 / "loaded.pt"), load(w2 / "loaded.pt")
    assert into_one["meta"]["world_size"] == 2 and into_two["meta"]["world_size"] == 1
    assert_same_state(into_one["restored"], load(w2 / "table_wise.pt")["state"], atol=0)
    assert_same_state(into_two["restored"], load(w1 / "row_wise.pt")["state"], atol=0)
    for loaded, saver in ((into_one, w2), (into_two, w1)):
        continued = load(saver / "continued.pt")
        assert loaded["loss"] == pytest.approx(continued["loss"], abs=1e-6)
        assert_same_state(loaded["state"], continued["state"], atol=1e-6)


def test_checkpoint_loads_into_unsharded_model(torchrun_runs):
    """A DCP checkpoint from 2 ranks loads into a plain model in a process with no group."""
    from recis.distributed import checkpoint as dcp_checkpoint
    from recis.models.dlrm import DLRM

    model = DLRM(w.MODEL, w.SCHEMA, torch.device("cpu"))
    meta = dcp_checkpoint.load(torchrun_runs / "ck2", model)
    assert meta["step"] == w.STEPS
    assert_same_state(model.state_dict(), load(torchrun_runs / "w2" / "table_wise.pt")["state"])
