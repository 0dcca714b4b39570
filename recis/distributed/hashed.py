"""The sharder of the hashed engine: every :class:`~recis.embedding.HashedEmbeddingCollection`
of a model replaced by a :class:`~recis.distributed.embedding.ShardedHashedEmbeddingCollection`
over the ranks (the parts are in :mod:`recis.distributed.embedding`).

The exchange runs on its own torch.distributed group (gloo on CPU, nccl on CUDA), so it
never interleaves with DDP's gradient all-reduces; under Horovod it is the group built from
Horovod's rank and size (:mod:`recis.distributed.context`), or Horovod's own all-to-all
(``transport="horovod"``). Between the ranks of one host on CPU, the blocking exchanges of
the step go through shared memory instead (:mod:`recis.distributed.shm`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch.distributed as dist
from torch import nn

from recis.embedding import HashedEmbeddingCollection
from recis.errors import ConfigError

from .embedding import (
    HASHED_SHARDING,
    Exchange,
    HorovodExchange,
    ShardedHashedEmbeddingCollection,
    check_hashed_kind,
    owner_of,
    place_tables,
)
from .shm import local_exchange

__all__ = [
    "HASHED_SHARDING",
    "check_hashed_kind",
    "ShardedHashedEmbeddingCollection",
    "hashed_collections",
    "owner_of",
    "place_tables",
    "shard_hashed",
]

Transport = Literal["auto", "process_group", "shared_memory", "horovod"]


def hashed_collections(model: nn.Module) -> Iterator[tuple[str, HashedEmbeddingCollection]]:
    """``(path, collection)`` for every hashed collection in ``model``."""
    for name, m in model.named_modules():
        if isinstance(m, HashedEmbeddingCollection):
            yield name, m


def rows_exchange(
    transport: Transport, group: dist.ProcessGroup | None, found: list[HashedEmbeddingCollection]
) -> Exchange | None:
    """The step's exchange for ``transport`` (None: the process group). ``auto``: shared
    memory where every rank is on this host (collective), else the process group."""
    if transport == "process_group" or not found:
        return None
    if transport == "horovod":
        return HorovodExchange()
    shm = local_exchange(group, found[0].device)
    if shm is None and transport == "shared_memory":
        raise ConfigError(
            "hashed exchange 'shared_memory': not every rank can reach the others' shared "
            "memory (several hosts, not CPU, or RECIS_SHM_EXCHANGE=0)"
        )
    return shm


def shard_hashed(
    model: nn.Module,
    rank: int = 0,
    world_size: int = 1,
    group: dist.ProcessGroup | None = None,
    kinds: dict[str, str] | None = None,
    transport: Transport = "auto",
) -> int:
    """Replace every :class:`HashedEmbeddingCollection` in ``model`` (in place) by a
    :class:`ShardedHashedEmbeddingCollection` over ``world_size`` ranks, tables placed by
    :func:`place_tables` with ``kinds`` (table -> sharding kind), the step's exchanges
    through ``transport``; returns how many."""
    found = list(hashed_collections(model))
    ex = rows_exchange(transport, group, [c for _, c in found]) if world_size > 1 else None
    for path, coll in found:
        if not path:
            raise TypeError("shard_hashed: pass the model that holds the collection")
        parent_path, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        in_feature_order = dict.fromkeys(coll.table_of.values())
        placement = place_tables([coll.tables[t] for t in in_feature_order], world_size, kinds)
        sharded = ShardedHashedEmbeddingCollection(
            coll, rank, world_size, group, placement=placement, rows_exchange=ex
        )
        setattr(parent, attr, sharded)
    return len(found)
