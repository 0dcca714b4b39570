"""The hashed embedding engine over ranks: :class:`ShardedHashedEmbeddingCollection`, put
together from the parts of this package.

It takes the place of a :class:`~recis.embedding.HashedEmbeddingCollection` in a
multi-process run. Every table is either kept whole on one rank or split by id over the
``W`` ranks (:mod:`~recis.distributed.embedding.plan`); this rank's rows live in local
collections, the single-process engine (:mod:`~recis.distributed.embedding.local`); a
lookup routes the ids of split tables to their owners
(:mod:`~recis.distributed.embedding.split`, :mod:`~recis.distributed.embedding.router`)
and the bags of whole tables to their ranks (:mod:`~recis.distributed.embedding.whole`)
through an exchange (:mod:`~recis.distributed.embedding.exchange`: the process group,
shared memory between the ranks of one host, or Horovod). Backward runs the exchanges in
reverse, the gradients divided by ``W`` (the mean over the global batch, as DDP does for
dense parameters and torchrec for its sharded tables), and the owners' fused optimizers
update their rows inside backward. Admission and eviction are those of one process, per
owner. A new id starts from a vector that is a function of (seed, table, id), so a run
starts from the same embeddings whatever the world size. State
(:mod:`~recis.distributed.embedding.state`) is independent of the world size.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

from recis.embedding import HashedEmbeddingCollection
from recis.embedding.collection import LookupModule
from recis.errors import EmbeddingError

from .exchange import Exchange, links
from .local import LocalTables
from .plan import PlacementPlan
from .router import BatchLayout
from .split import SplitLookup
from .state import ByIdState
from .whole import WholeLayout, WholeLookup

__all__ = ["ShardedHashedEmbeddingCollection"]


class ShardedHashedEmbeddingCollection(LookupModule):
    """A :class:`~recis.embedding.HashedEmbeddingCollection` over ranks: every table either
    kept whole on one rank (table-wise) or split by id over all ranks (row-wise).

    Same forward contract as the collection it replaces (``forward``,
    ``forward_sequences``, ``lookup``); every forward is a collective, so all ranks run
    the same number of steps.

    The local collections are not submodules: DDP must neither all-reduce nor broadcast
    them (each rank holds different rows), and they update in backward.

    Args:
        source: the single-process collection (its tables, features, seed and device).
        rank, world_size: this process in the run.
        group: process group of the exchange (None: the default group).
        exchange: route ids to their owners (default: when ``world_size > 1``; one process
            then runs the plain pooled lookup, which is the same step; tests set it to run
            the routing code in one process).
        placement: ``{table: rank}`` for the tables kept whole on one rank; the others are
            split by id (:func:`~recis.distributed.embedding.plan.place_tables`).
        rows_exchange: the step's exchange (rows, gradients, ids to the ranks of whole
            tables), e.g. :func:`~recis.distributed.shm.local_exchange`'s shared memory
            (None: the process group).
    """

    def __init__(
        self,
        source: HashedEmbeddingCollection,
        rank: int = 0,
        world_size: int = 1,
        group: dist.ProcessGroup | None = None,
        exchange: bool | None = None,
        placement: dict[str, int] | None = None,
        rows_exchange: Exchange | None = None,
    ) -> None:
        super().__init__()
        self.rank, self.world, self.group = rank, world_size, group
        # one process owns every id: the plain pooled lookup is the same step, faster
        self.exchange = world_size > 1 if exchange is None else exchange
        self.device = source.device
        self.configs = dict(source.tables)
        self.pooled_features = list(source.pooled_features)
        self.sequence_features = list(source.sequence_features)
        self.plan = PlacementPlan(tuple(source.tables), world_size, dict(placement or {}))
        self.tables = LocalTables(source, self.plan, rank, self.exchange)
        self.links = links(world_size, group, self.device, rows_exchange)
        self.rows_exchange = rows_exchange
        # tables of one dim travel together: dim-major
        self.order = sorted(self.plan.tables, key=lambda t: self.configs[t].dim)
        self.state = ByIdState(
            self.tables, self.plan, self.order, self.configs, rank, group, self.links
        )
        self._idle_step = source.step  # the step count of a rank without local tables
        self.dims = {f: self.configs[t].dim for f, t in source.table_of.items()}
        whole = self._whole_layout(source)
        self.whole_lookup = WholeLookup(whole, self.tables.whole, self.links, self.device)
        self.split_lookup: SplitLookup | None = None
        if self.exchange and self.plan.split:
            assert self.tables.split is not None
            feats = {t: list(source.where_features(t)) for t in self.plan.tables}
            split = [t for t in self.order if t in self.plan.split]
            self.split_lookup = SplitLookup(
                split, feats, self.configs, dict(source.weighted), self.tables.split, self.links
            )

    def _whole_layout(self, source: HashedEmbeddingCollection) -> WholeLayout:
        """Per rank, the features of the whole tables it holds."""
        feats_on = [
            [f.name for f in self.tables.features(self.plan.whole_on(r))] for r in range(self.world)
        ]
        held = {f for fs in feats_on for f in fs}
        return WholeLayout(
            rank=self.rank,
            feats_on=feats_on,
            pooled_on=[
                [(f, self.dims[f]) for f in fs if f in self.pooled_features] for fs in feats_on
            ],
            seq_on=[
                [(f, self.dims[f]) for f in fs if f in self.sequence_features] for fs in feats_on
            ],
            weighted_on=[any(source.weighted[f] for f in fs) for fs in feats_on],
            weighted=dict(source.weighted),
            whole_pooled=[(f, self.dims[f]) for f in self.pooled_features if f in held],
        )

    # ------------------------------------------------------------------ parts
    @property
    def placement(self) -> dict[str, int]:
        """``{table: rank}`` of the tables kept whole."""
        return dict(self.plan.whole)

    @property
    def local(self) -> HashedEmbeddingCollection | None:
        """This rank's part of the tables split by id (the ids
        :func:`~recis.distributed.embedding.plan.owner_of` gives it; in one process
        without exchange: every table)."""
        return self.tables.split

    @property
    def whole(self) -> HashedEmbeddingCollection | None:
        """The whole tables this rank holds (table-wise), or None."""
        return self.tables.whole

    @property
    def shm(self) -> Exchange | None:
        """The step's exchange when it is not the process group's (shared memory)."""
        return self.rows_exchange

    def holder(self, table: str) -> HashedEmbeddingCollection | None:
        """The collection holding ``table``'s rows on this rank (None: another rank's)."""
        return self.tables.holder(table)

    def owners(self, table: str, ids: torch.Tensor) -> torch.Tensor:
        """Rank holding each id of ``table``."""
        return self.plan.owners(table, ids)

    @property
    def step(self) -> int:
        """Training steps counted: the local collections count them, one per lookup."""
        for c in self.tables.looked_up():
            return c.step
        return self._idle_step

    @step.setter
    def step(self, value: int) -> None:
        self._idle_step = value
        for c in self.tables.all():
            c.step = value

    @property
    def prefetched_lookups(self) -> int:
        """Lookups that found their ids sent ahead."""
        return self.whole_lookup.prefetched_lookups

    def train(self, mode: bool = True) -> ShardedHashedEmbeddingCollection:
        super().train(mode)
        for c in self.tables.all():
            c.train(mode)
        return self

    # ------------------------------------------------------------------ lookup
    def lookup(self, kjt: KeyedJaggedTensor) -> tuple[KeyedTensor | None, dict[str, JaggedTensor]]:
        """Pooled KeyedTensor (or None) and sequence JaggedTensors (collective)."""
        keys = kjt.keys()
        missing = [f for f in self.pooled_features + self.sequence_features if f not in keys]
        if missing:
            raise EmbeddingError(f"input has no feature(s) {missing} (keys: {keys})")
        values = kjt.values()
        if values.dtype.is_floating_point or values.dtype == torch.bool:
            raise EmbeddingError(f"ids must be integers, got {values.dtype}")
        if self.training and next(self.tables.looked_up(), None) is None:
            self._idle_step += 1  # nothing held here counts it
        if not self.exchange:
            assert self.local is not None
            return self.local.lookup(kjt)
        lay = BatchLayout.of(kjt)
        route = self.whole_lookup.route_of(kjt, lay) if self.plan.whole else None
        pooled: dict[str, torch.Tensor] = {}
        seqs: dict[str, JaggedTensor] = {}
        if self.split_lookup is not None:
            self.split_lookup(kjt, lay, pooled, seqs)
        whole = self.whole_lookup(route, seqs) if route is not None else None
        self.whole_lookup.send_ahead()  # the next batch's ids: their sizes are in by now
        whole_pooled = [f for f, _ in self.whole_lookup.layout.whole_pooled]
        if whole is not None and len(whole_pooled) == len(self.pooled_features):
            values = whole  # every pooled feature is a whole table's: already in order
        elif self.pooled_features:
            if whole is not None:
                widths = [self.dims[f] for f in whole_pooled]
                pooled.update(zip(whole_pooled, whole.split(widths, dim=1)))
            values = torch.cat([pooled[f] for f in self.pooled_features], dim=1)
        else:
            return None, seqs
        kt = KeyedTensor(
            keys=self.pooled_features,
            length_per_key=[self.dims[f] for f in self.pooled_features],
            values=values,
        )
        return kt, seqs

    @property
    def sends_ahead(self) -> bool:
        """Whether :meth:`prefetch` sends anything: several ranks and whole tables."""
        return self.exchange and bool(self.plan.whole)

    def prefetch(self, kjt: KeyedJaggedTensor) -> bool:
        """Start sending ``kjt``'s ids to the ranks that hold their whole tables ahead of
        its lookup: in the background on the process group, while the current step
        computes; through shared memory right after the current lookup's exchange (a
        collective: every rank calls it, for its own next batch, before the current
        batch's lookup).
        The :meth:`lookup` of this same ``kjt`` object takes them from there, which leaves
        its forward one collective instead of three. Only ids move ahead: mapping,
        admission and eviction happen in that lookup, as without prefetch.

        At most two batches are ahead (the one about to be looked up, and the next); an
        older one is finished and dropped, and so is one that a later batch's lookup
        overtook. Returns False, and sends nothing, where there is nothing to send ahead:
        one process, no whole tables, or ``kjt`` lacks one of their features.
        """
        if not self.sends_ahead:
            return False
        return self.whole_lookup.prefetch(kjt)

    # ------------------------------------------------------------------ state
    def state_dict(  # type: ignore[override]  # nn.Module's overloads; keys of ByIdState
        self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False
    ) -> dict[str, Any]:
        """World-size-independent state (collective): ``rows.<table>.<field>`` row-sharded
        over ranks, ``step``, ``sketch.<table>``
        (:class:`~recis.distributed.embedding.state.ByIdState`). After :meth:`prepare_load`
        the tensors are empty templates shaped like the checkpoint's."""
        out = destination if destination is not None else OrderedDict()
        out.update(self.state.state_dict(self.step, prefix))
        return out

    def prepare_load(self, sizes: dict[str, torch.Size] | None, root: str = "") -> None:
        """Make the next :meth:`state_dict` a template for loading a checkpoint whose
        tensors (full names ``root + <module prefix> + key``) have these global sizes
        (None: back to the live state)."""
        self.state.prepare_load(sizes, root)

    def _load_from_state_dict(  # nn.Module's hook for a module's own keys
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        step = self.state.load(state_dict, prefix, strict, missing_keys)
        if step is not None:
            self.step = step

    def gather_rows(self, table: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rank's live ``(ids [N], weights [N, D])`` of ``table``, sorted by id, on
        every rank (collective; for tests, exports and small tables)."""
        return self.state.gather_rows(table)

    def export_embeddings(self, path: str | Path) -> None:
        """All ranks' live rows as one safetensors file, written by rank 0 (collective)."""
        self.state.export_embeddings(path)
