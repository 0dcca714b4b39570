"""This rank's local collections: the single-process engine
(:class:`~recis.embedding.HashedEmbeddingCollection`) holding the rows this rank owns.

:class:`LocalTables` builds them from the collection being sharded and a
:class:`~recis.distributed.embedding.plan.PlacementPlan`:

- ``split``: this rank's part of the tables split by id (``ceil(capacity / W)`` rows each,
  pooling ``none``, one feature per table: the owner side of the exchange);
- ``whole``: the tables kept whole on this rank, with their features as in the source;
- ``templates``: one-row templates of the whole tables other ranks hold (their shapes,
  dtypes and optimizer-state layout, for checkpoint templates), never looked up.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

from recis.config import TableConfig
from recis.embedding import HashedEmbeddingCollection
from recis.errors import ConfigError
from recis.features import SparseFeature

from .plan import PlacementPlan

__all__ = ["LocalTables"]


class LocalTables:
    """The local collections of one rank (see the module docstring).

    Args:
        source: the single-process collection being sharded (tables, features, seed,
            device, per-table optimizers and init scales).
        plan: where the tables go.
        rank: this rank.
        exchange: False: one process without routing, one plain collection of every
            table as ``split`` (features as in the source).
    """

    def __init__(
        self, source: HashedEmbeddingCollection, plan: PlacementPlan, rank: int, exchange: bool
    ) -> None:
        for name, t in source.tables.items():
            if t.mapper != "hash":
                raise ConfigError(
                    f"model.tables.{name}.mapper: 'none' tables cannot be sharded by id; "
                    "use mapper: hash"
                )
        self.source, self.plan, self.rank, self.exchange = source, plan, rank, exchange
        if not exchange:  # one process: one plain collection of every table
            tables = list(source.tables)
            self.split = self._build(tables, self.features(tables), split=True)
            self.whole = self.templates = None
            return
        split = plan.split
        self.split = self._build(split, [SparseFeature(name=t, table=t) for t in split], True)
        here = plan.whole_on(rank)
        self.whole = self._build(here, self.features(here), split=False)
        elsewhere = [t for t in plan.whole if t not in here]
        self.templates = self._build(elsewhere, self.features(elsewhere), False, template=True)

    def features(self, tables: list[str]) -> list[SparseFeature]:
        """The source's features of ``tables``, in the source's feature order (the order
        of its output keys)."""
        src = self.source
        return [
            SparseFeature(name=f, table=t, weight_column=f if src.weighted[f] else None)
            for f, t in src.table_of.items()
            if t in tables
        ]

    def _config(self, name: str, split: bool) -> TableConfig:
        """Table ``name`` as held here: a ``1 / W`` part if split by id."""
        t = self.source.resolved_table(name)
        parts = self.plan.world if split else 1
        return dataclasses.replace(
            t,
            pooling="none" if split and self.exchange else t.pooling,
            capacity=math.ceil(t.capacity / parts),
            max_capacity=math.ceil(t.max_capacity / parts) if t.max_capacity else None,
        )

    def _build(
        self, tables: list[str], feats: list[SparseFeature], split: bool, template: bool = False
    ) -> HashedEmbeddingCollection | None:
        if not tables:
            return None
        src, world = self.source, self.plan.world
        # the source's seed: ids start from the same vectors as in one process
        coll = HashedEmbeddingCollection(
            [self._config(t, split) for t in tables],
            feats,
            src.device,
            seed=src.seed,
            template=template,
        )
        coll.train(src.training)
        coll.step = src.step
        if world > 1:  # errors (a full table) name the shard
            for name, mapper in coll.mappers.items():
                where = f"shard of rank {self.rank} of {world}" if split else f"on rank {self.rank}"
                mapper.name = f"{name} ({where})"
        return coll

    def looked_up(self) -> Iterator[HashedEmbeddingCollection]:
        """The collections a lookup uses (each one exactly once per lookup)."""
        yield from (c for c in (self.split, self.whole) if c is not None)

    def all(self) -> Iterator[HashedEmbeddingCollection]:
        """Every local collection, templates included."""
        yield from (c for c in (self.split, self.whole, self.templates) if c is not None)

    def holder(self, table: str) -> HashedEmbeddingCollection | None:
        """The collection holding ``table``'s rows on this rank (None: another rank's)."""
        for c in self.looked_up():
            if table in c.tables:
                return c
        return None

    def shaped_like(self, table: str) -> HashedEmbeddingCollection:
        """The collection holding ``table`` here, else its template."""
        found = self.holder(table)
        if found is None:
            assert self.templates is not None and table in self.templates.tables, table
            return self.templates
        return found
