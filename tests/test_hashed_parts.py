"""The parts of the distributed hashed engine (recis.distributed.embedding) on their own:
the placement plan, the id router (no processes: the all-to-all simulated), the exchanges
against each other on 2 real Horovod/gloo ranks, and the by-id state saved on 2 ranks and
loaded into one."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

from recis.distributed.embedding import PlacementPlan, ShardedHashedEmbeddingCollection
from recis.distributed.embedding.router import SplitRoute
from recis.errors import ConfigError

sys.path.insert(0, str(Path(__file__).parent))
import distributed_worker as w  # noqa: E402
import test_hashed_sharded as one  # noqa: E402

sys.path.pop(0)
WORKER = Path(__file__).parent / "hashed_parts_worker.py"


def test_placement_plan_gives_every_id_one_owner():
    plan = PlacementPlan(("a", "b", "c"), 3, {"b": 2})
    assert plan.split == ["a", "c"] and plan.whole_on(2) == ["b"] and plan.whole_on(0) == []
    ids = torch.randint(-(2**62), 2**62, (30_000,), generator=torch.Generator().manual_seed(0))
    for t in plan.tables:
        owners = plan.owners(t, ids)
        assert owners.shape == ids.shape and owners.min() >= 0 and owners.max() < 3
        # one owner per id: the same id always goes to the same rank
        assert torch.equal(plan.owners(t, ids.flip(0)), owners.flip(0))
        counts = torch.bincount(owners, minlength=3)
        if t == "b":
            assert counts.tolist() == [0, 0, 30_000]
        else:  # split: every rank owns about a third
            assert counts.min() > 9_500
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.world = 4  # type: ignore[misc]  # the test of frozenness itself
    with pytest.raises(ConfigError, match="'b' on rank 3"):
        PlacementPlan(("a", "b"), 3, {"b": 3})
    with pytest.raises(ConfigError, match="'z' on rank 0"):
        PlacementPlan(("a", "b"), 3, {"z": 0})


def _all_to_all(parts: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """``parts[s][d]`` sent from rank ``s`` to ``d``: what each rank receives, source order."""
    return [torch.cat([parts[s][d] for s in range(len(parts))]) for d in range(len(parts))]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_router_round_trip_is_identity(world):
    """Every rank's unique ids of 3 tables to their owners and the owners' rows back (the
    all-to-alls simulated): each owner gets exactly the ids it owns with their counts, and
    what comes back, put in place, is each rank's own ids in their order."""
    g = torch.Generator().manual_seed(world)
    uniq, counts = [], []
    for _ in range(world):
        ids = [torch.randint(-50, 50, (n,), generator=g) * (2**33 + 1) for n in (40, 0, 25)]
        u = [torch.unique(i, return_counts=True) for i in ids]
        uniq.append([x for x, _ in u])
        counts.append([c for _, c in u])
    routes = [SplitRoute.of(uniq[r], counts[r], world) for r in range(world)]
    sends = [r.send for r in routes]
    recvs = [torch.stack([sends[s][d] for s in range(world)]) for d in range(world)]
    payloads = [list(r.payload.split(r.send_sizes())) for r in routes]
    got = _all_to_all(payloads)
    owners = [routes[d].received(recvs[d], got[d]) for d in range(world)]
    for d, owner in enumerate(owners):
        for t in range(3):  # source after source, each in its own order, counts alongside
            mine = [_owned(uniq[s][t], world, d) for s in range(world)]
            want = torch.cat([uniq[s][t][m] for s, m in enumerate(mine)])
            assert torch.equal(owner.ids[t], want)
            assert torch.equal(
                owner.counts[t], torch.cat([counts[s][t][m] for s, m in enumerate(mine)])
            )
    # each owner answers with the ids themselves as rows, table-major as looked up
    replies = []
    for owner in owners:
        rows, back = owner.reply(0, 3)
        replies.append(list(torch.cat(owner.ids)[rows].split(back)))
    returned = _all_to_all(replies)
    for r, route in enumerate(routes):
        slot = route.slots(0, 3)
        in_place = torch.empty_like(returned[r])
        in_place[slot] = returned[r]
        assert torch.equal(in_place, torch.cat(uniq[r]))


def _owned(ids: torch.Tensor, world: int, rank: int) -> torch.Tensor:
    from recis.distributed.embedding import owner_of

    return owner_of(ids, world) == rank


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("parts")
    hvd = [w.BIN / "horovodrun", "-np", "2", "-H", "localhost:2", "--gloo", sys.executable]
    w.run_all([w.spawn([*hvd, WORKER, out])])
    return out


def test_exchanges_agree_on_two_ranks(two_ranks):
    """Process group, shared memory and Horovod all-to-alls gave every rank the rows the
    others made for it, blocking and started (6 calls, empty blocks, two dtypes); a sharded
    collection trains the same through Horovod's as through shared memory."""
    saved = torch.load(two_ranks / "state.pt", weights_only=False)
    assert [checked for checked, _, _ in saved["ranks"]] == [6, 6]
    # a collection whose step exchanges go through Horovod: the same outputs and rows
    assert [horovod for _, _, horovod in saved["ranks"]] == [(0.0, True)] * 2


def test_state_saved_on_two_ranks_loads_into_one(two_ranks):
    """State of 2 ranks (a and s whole, b and c split by id) loaded into one rank (every
    table split, and plain): the same live rows, optimizer state, LRU steps and step."""
    saved = torch.load(two_ranks / "state.pt", weights_only=False)
    assert [held for _, held, _ in saved["ranks"]] == [["s"], ["a"]]
    state = saved["state"]
    assert int(state["step"]) == 4 and "sketch.c" in state and "rows.c.last" in state
    for exchange in (True, False):
        loaded = ShardedHashedEmbeddingCollection(
            one.collection("adagrad"), exchange=exchange, placement={}
        )
        loaded.load_state_dict(state)
        assert loaded.step == 4
        again = loaded.state_dict()
        for t, (ids, weights) in saved["rows"].items():
            got_ids, got = loaded.gather_rows(t)
            assert torch.equal(got_ids, ids) and torch.equal(got, weights), t
            order = again[f"rows.{t}.ids"].argsort()
            saved_order = state[f"rows.{t}.ids"].argsort()
            for field in ("state0", "last"):
                key = f"rows.{t}.{field}"
                if key in state:
                    assert torch.equal(again[key][order], state[key][saved_order]), key
        assert torch.equal(again["sketch.c"], state["sketch.c"])
