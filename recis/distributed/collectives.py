"""Small collectives over the default process group: global metrics, even batch counts,
and whole (unsharded) tensors from a sharded model."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.tensor import DTensor

T = TypeVar("T")


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def mean_over_ranks_async(values: torch.Tensor) -> Callable[[], list[float]]:
    """Start averaging ``values`` (a 1-D tensor) over ranks; the returned function waits
    and gives the means as floats."""
    if not _active():
        return values.tolist
    t = values.to(torch.float64)
    work = dist.all_reduce(t, async_op=True)

    def done() -> list[float]:
        work.wait()
        return (t / dist.get_world_size()).tolist()

    return done


def even_batches(data: Iterable[T], pad: bool = False) -> Iterator[tuple[T, bool]]:
    """Yield ``(batch, real)`` so that every rank yields the same number of items.

    Every step of a sharded model is a collective (embedding all-to-alls), so ranks must
    run the same number of steps or the longer one hangs. Each step all-reduces one flag:
    without ``pad`` all ranks stop when the first runs out (training); with ``pad`` a
    rank that ran out repeats its last batch with ``real=False`` until all are done
    (evaluation: nothing is dropped, padded predictions are discarded).
    """
    it = iter(data)
    if not _active():
        for batch in it:
            yield batch, True
        return
    last: T | None = None
    first = True
    while True:
        item: T | None = next(it, None)
        if not pad:
            have = torch.tensor([0 if item is None else 1])
            dist.all_reduce(have, op=dist.ReduceOp.MIN)
            if int(have) == 0:
                return
            yield item, True  # type: ignore[misc]  # every rank has one: item is not None
            continue
        have = torch.zeros(dist.get_world_size(), dtype=torch.int64)
        have[dist.get_rank()] = 0 if item is None else 1
        dist.all_reduce(have)  # which ranks still have data
        if int(have.sum()) == 0:
            return
        if first and int(have.min()) == 0:
            # a rank with no batch at all still has to run the steps: borrow one to pad with
            src = int(torch.nonzero(have)[0])
            box = [item if dist.get_rank() == src else None]
            dist.broadcast_object_list(box, src=src)
            last = item if item is not None else box[0]
        first = False
        if item is None:
            yield last, False  # type: ignore[misc]  # set on the first step (borrowed if none)
        else:
            last = item
            yield item, True


def full_tensor(value: Any) -> Any:
    """The whole tensor behind a ShardedTensor / DTensor (collective); others pass through."""
    if isinstance(value, DTensor):
        return value.full_tensor().detach().to("cpu", copy=True)
    if isinstance(value, ShardedTensor):
        shards = [(s.metadata.shard_offsets, s.tensor.detach().cpu()) for s in value.local_shards()]
        every: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(every, shards)
        out = torch.zeros(value.size(), dtype=value.metadata().tensor_properties.dtype)
        for rank_shards in every:
            for offsets, t in rank_shards:
                index = tuple(slice(o, o + n) for o, n in zip(offsets, t.shape))
                out[index] = t
        return out
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)  # a snapshot, not a view of live weights
    return value


def full_state_dict(model: torch.nn.Module) -> dict[str, Any]:
    """``model.state_dict()`` with every sharded tensor assembled whole, on every rank.

    Meant for small models and tests (all shards travel to all ranks); checkpoints of
    large models go through :mod:`recis.distributed.checkpoint` instead.
    """
    return {k: full_tensor(v) for k, v in model.state_dict().items()}
