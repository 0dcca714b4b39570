"""The hashed embedding engine over ranks, in named parts (torchrec's module / sharded
module / sharder split):

- :mod:`.plan`: the placement plan (which rank owns which table or id);
- :mod:`.router`: id routing, ids to their owner ranks and back (pure tensor code);
- :mod:`.local`: this rank's local collections (the single-process engine);
- :mod:`.exchange`: the exchange interface and its process-group and Horovod transports
  (shared memory: :mod:`recis.distributed.shm`);
- :mod:`.split` / :mod:`.whole`: the lookups of tables split by id and kept whole;
- :mod:`.state`: save, load and reshard by id;
- :mod:`.engine`: :class:`ShardedHashedEmbeddingCollection`, the module put together.

:mod:`recis.distributed.hashed` is the sharder (:func:`~recis.distributed.hashed.shard_hashed`).
See docs/distributed.md.
"""

from .engine import ShardedHashedEmbeddingCollection
from .exchange import Exchange, HorovodExchange, ProcessGroupExchange
from .plan import HASHED_SHARDING, PlacementPlan, check_hashed_kind, owner_of, place_tables

__all__ = [
    "HASHED_SHARDING",
    "Exchange",
    "HorovodExchange",
    "PlacementPlan",
    "ProcessGroupExchange",
    "ShardedHashedEmbeddingCollection",
    "check_hashed_kind",
    "owner_of",
    "place_tables",
]
