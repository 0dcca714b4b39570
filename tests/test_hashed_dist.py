"""The hashed engine over 2 ranks (torchrun and horovodrun, gloo; one table split by id, two
kept whole) against 1 rank and one plain process: same losses and rows by id; admission
counted as on one process; LRU per owner; checkpoints reshard 2 -> 1 and 1 -> 2 with
mapper state."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import distributed_worker as w  # noqa: E402
import hashed_worker as hw  # noqa: E402
from test_distributed import assert_same_state, load  # noqa: E402

sys.path.pop(0)
WORKER = ROOT / "tests" / "hashed_worker.py"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """2 ranks under torchrun and 1 rank (env set by hand), each loading the other's
    checkpoint."""
    root = tmp_path_factory.mktemp("hashed")

    def start(tmp: Path) -> list:
        for d in ("w1", "w2"):
            (tmp / d).mkdir()
        one = w.single_rank_env()
        two = [w.TORCHRUN, "--nproc-per-node", "2", "--master-port", str(w.free_port())]
        return [
            w.spawn(
                [*two, WORKER, tmp / "w2", "--save-ckpt", tmp / "ck2", "--load-ckpt", tmp / "ck1"]
            ),
            w.spawn(
                [
                    sys.executable,
                    WORKER,
                    tmp / "w1",
                    "--save-ckpt",
                    tmp / "ck1",
                    "--load-ckpt",
                    tmp / "ck2",
                ],
                env=one,
            ),
        ]

    return w.run_all_in(start, root)


def assert_same_rows(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert sorted(a) == sorted(b)
    for t in a:
        assert a[t][0].tolist() == b[t][0].tolist(), f"{t}: different ids live"
        torch.testing.assert_close(
            a[t][1], b[t][1], atol=atol, rtol=1e-4, msg=lambda m, t=t: f"{t}: {m}"
        )


def single_process() -> dict:
    """The plain Trainer on the whole global batches, unsharded HashedEmbeddingCollection."""
    from recis.models.dlrm import DLRM
    from recis.train import Trainer

    torch.manual_seed(0)
    model = DLRM(hw.MODEL, w.SCHEMA, torch.device("cpu"))
    batches = [w.rank_batch(s, 0, 1) for s in range(w.STEPS)]
    trainer = Trainer(model, batches, None, w.TRAIN)
    losses = [trainer.train_step(b)["loss"] for b in batches]
    coll = model.sparse_arch
    rows = {}
    for t, m in coll.mappers.items():
        ids, r = m.items()
        g, j = coll.where[t]
        order = torch.from_numpy(ids).argsort()
        vec = coll.groups[g].weight(j)[torch.from_numpy(r + 1)].detach()
        rows[t] = (torch.from_numpy(ids)[order], vec[order])
    return {"losses": losses, "rows": rows}


def test_two_ranks_match_one_rank_and_one_process(runs):
    one, two = load(runs / "w1" / "run.pt"), load(runs / "w2" / "run.pt")
    ref = single_process()
    assert two["world"] == 2 and one["world"] == 1
    assert two["placement"] == {"C1": 0, "C2": 1}  # C0 split by id, C1 and C2 whole
    # every step after the first took the ids sent ahead during the step before it
    assert (two["prefetched"], one["prefetched"]) == (len(two["losses"]) - 1, 0)
    # ranks of one host: rows and gradients went through shared memory
    assert two["shm"] and not one["shm"]
    assert two["losses"] == pytest.approx(one["losses"], abs=1e-5)
    assert one["losses"] == pytest.approx(ref["losses"], abs=1e-5)
    assert_same_rows(two["rows"], one["rows"])
    assert_same_rows(one["rows"], ref["rows"])
    assert_same_state(two["dense"], one["dense"])
    # admission (min_count 2, counted over both ranks' batches): fewer ids live in C0
    assert 0 < len(two["rows"]["C0"][0]) < len(two["rows"]["C1"][0])


def test_checkpoints_reshard_both_ways(runs):
    """2-rank checkpoint into 1 rank and back: every live row (ids, vectors) restored
    exactly, and the next step (optimizer state, step counter) equals the saver's."""
    w1, w2 = runs / "w1", runs / "w2"
    into_one, into_two = load(w1 / "loaded.pt"), load(w2 / "loaded.pt")
    assert into_one["meta"]["world_size"] == 2 and into_two["meta"]["world_size"] == 1
    assert_same_rows(into_one["restored"]["rows"], load(w2 / "run.pt")["rows"], atol=0)
    assert_same_rows(into_two["restored"]["rows"], load(w1 / "run.pt")["rows"], atol=0)
    for loaded, saver in ((into_one, w2), (into_two, w1)):
        continued = load(saver / "continued.pt")
        assert loaded["loss"] == pytest.approx(continued["loss"], abs=1e-6)
        assert_same_rows(loaded["rows"], continued["rows"], atol=1e-6)


def test_each_owner_evicts_like_a_lone_mapper(runs):
    for world in ("w1", "w2"):
        ranks = load(runs / world / "eviction.pt")
        for r in ranks:
            assert r["got"] == r["want"]
            assert r["size"] == 8 // len(ranks)  # full: eviction ran
        owned = [i for r in ranks for i in r["got"]]
        assert len(owned) == len(set(owned))  # one owner per id


def test_whole_and_split_tables_match_one_collection_on_the_global_batch(runs):
    """Shared, mean, weighted, sequence, admission and LRU tables kept whole on either of
    2 ranks (and one split by id), with and without the next batch's ids prefetched:
    outputs and rows by id equal the plain collection's."""
    for world in ("w1", "w2"):
        ranks = load(runs / world / "layouts.pt")
        for rank, layouts in enumerate(ranks):
            for name, got in layouts.items():
                assert got["outputs"] < 1e-5, (world, rank, name)
                for t, (same_ids, diff) in got["rows"].items():
                    assert same_ids and diff < 1e-5, (world, rank, name, t, diff)
    two = load(runs / "w2" / "layouts.pt")
    assert [r["whole"]["held"] for r in two] == [["a", "c"], ["b", "s"]]
    assert [r["mixed"]["held"] for r in two] == [["c", "s"], ["a"]]
    # steps 1-3 of "prefetched" found their ids sent ahead
    assert [[r[n]["prefetched"] for n in r] for r in two] == [[0, 0, 3]] * 2


@pytest.fixture(scope="module")
def horovod_run(runs):
    """2 Horovod ranks (embeddings over the torch.distributed group built from Horovod's
    rank and size), loading the 1-rank torchrun checkpoint."""
    out = runs / "hvd"
    out.mkdir()
    hvd = [w.BIN / "horovodrun", "-np", "2", "-H", "localhost:2", "--gloo", sys.executable]
    args = [WORKER, out, "--save-ckpt", runs / "ckh", "--load-ckpt", runs / "ck1"]
    w.run_all([w.spawn([*hvd, *args, "--launcher", "horovod"])])
    return out


def test_horovod_two_ranks_match_one_rank(runs, horovod_run):
    one, two = load(runs / "w1" / "run.pt"), load(horovod_run / "run.pt")
    assert two["world"] == 2 and two["prefetched"] == len(two["losses"]) - 1 and two["shm"]
    assert two["losses"] == pytest.approx(one["losses"], abs=1e-5)
    assert_same_rows(two["rows"], one["rows"])
    assert_same_state(two["dense"], one["dense"])
    loaded = load(horovod_run / "loaded.pt")
    assert_same_rows(loaded["restored"]["rows"], one["rows"], atol=0)
    assert loaded["loss"] == pytest.approx(load(runs / "w1" / "continued.pt")["loss"], abs=1e-6)
