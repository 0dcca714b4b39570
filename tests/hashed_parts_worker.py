"""One rank of tests/test_hashed_parts.py (horovodrun -np 2 --gloo). Not collected by pytest.

    python tests/hashed_parts_worker.py OUT

1. Every exchange (process group, shared memory, Horovod) on the same inputs, blocking and
   started: each result equals the rows the senders made for this rank (computed here from
   the same formula) and the others' results.
2. A sharded collection over the 2 ranks (tables split by id and kept whole) trains a few
   steps, beside one whose step exchanges go through Horovod; rank 0 writes its state (row-sharded tensors assembled whole) and every table's
   live rows to OUT/state.pt, for a load into one rank.
"""

from __future__ import annotations

import sys
from pathlib import Path

import test_hashed_sharded as one
import torch
import torch.distributed as dist

from recis.distributed import init_distributed, shutdown
from recis.distributed.collectives import full_tensor
from recis.distributed.embedding import (
    HorovodExchange,
    ProcessGroupExchange,
    ShardedHashedEmbeddingCollection,
)
from recis.distributed.shm import local_exchange

CPU = torch.device("cpu")
PLACEMENT = {"a": 1, "s": 0}  # b and c split by id


def rows_for(src: int, dst: int, call: int, dtype: torch.dtype) -> torch.Tensor:
    """The rows rank ``src`` sends rank ``dst`` in call ``call`` (0 to 5 rows, some empty)."""
    n = (7 * src + 3 * dst + 5 * call) % 6
    base = torch.arange(n * 3, dtype=torch.float64).view(n, 3)
    return (base + 1000 * src + 100 * dst + 10 * call).to(dtype)


def check_exchanges(rank: int, world: int) -> int:
    """Calls in which every exchange gave the expected rows; raises on a difference."""
    shm = local_exchange(None, CPU)
    assert shm is not None, "one host: shared memory expected"
    exchanges = {
        "process_group": ProcessGroupExchange(None, CPU),
        "shared_memory": shm,
        "horovod": HorovodExchange(),
    }
    assert all((e.rank, e.world) == (rank, world) for e in exchanges.values())
    checked = 0
    for call in range(6):
        dtype = [torch.float32, torch.int64][call % 2]
        parts = [rows_for(rank, d, call, dtype) for d in range(world)]
        x, send = torch.cat(parts), [len(p) for p in parts]
        want = torch.cat([rows_for(s, rank, call, dtype) for s in range(world)])
        recv = [len(rows_for(s, rank, call, dtype)) for s in range(world)]
        for name, ex in exchanges.items():
            got = torch.full_like(want, -1)
            ex.all_to_all(got, x, recv, send)
            assert torch.equal(got, want), (name, call, rank)
            assert torch.equal(ex.start(x, send, recv)(), want), (name, "start", call, rank)
        checked += 1
    shm.close()
    return checked


def trained_state(rank: int, world: int) -> dict:
    """State (assembled whole) and live rows of a collection trained over the ranks; the
    same steps with the step's exchanges through Horovod give the same outputs and rows."""
    group = dist.new_group(backend="gloo")
    sharded, over_horovod = (
        ShardedHashedEmbeddingCollection(
            one.collection("adagrad"), rank, world, group, placement=PLACEMENT, rows_exchange=ex
        )
        for ex in (None, HorovodExchange())
    )
    worst = 0.0
    for step in range(4):
        kjt = one.batch(10 * step + rank)
        a, b = one.step_outputs(sharded, kjt), one.step_outputs(over_horovod, kjt)
        worst = max(worst, float((a - b).abs().max()))
    state = {k: full_tensor(v) for k, v in sharded.state_dict().items()}
    rows = {t: sharded.gather_rows(t) for t in ("a", "b", "c", "s")}
    same_rows = all(
        torch.equal(rows[t][0], ids) and torch.equal(rows[t][1], weights)
        for t, (ids, weights) in ((t, over_horovod.gather_rows(t)) for t in rows)
    )
    held = sorted(sharded.whole.tables)
    return {"state": state, "rows": rows, "held": held, "horovod": (worst, same_rows)}


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    ctx = init_distributed("horovod", "cpu", "gloo")
    checked = check_exchanges(ctx.rank, ctx.world_size)
    result = trained_state(ctx.rank, ctx.world_size)
    every: list = [None] * ctx.world_size
    dist.all_gather_object(every, (checked, result["held"], result["horovod"]))
    if ctx.rank == 0:
        torch.save({**result, "ranks": every}, out / "state.pt")
    shutdown(ctx)


if __name__ == "__main__":
    main()
