"""The hashed embedding engine over ranks: every id is owned by exactly one rank's mapper.

:class:`ShardedHashedEmbeddingCollection` takes the place of a
:class:`~recis.embedding.HashedEmbeddingCollection` in a multi-process run. Every
table is split by id over the ``W`` ranks: id ``x`` belongs to rank
:func:`owner_of` ``(x)`` (Fibonacci hashing, uniform even for sequential raw
ids), whose :class:`~recis.ops.IdMapper` and fbgemm table of ``ceil(capacity / W)``
rows hold it. One step, on each rank, for its own batch:

1. per table, the batch's ids are deduplicated (``torch.unique``), with their counts;
2. ids and counts go to their owners in one ``all_to_all_single``;
3. each owner maps what it received (counts included, so admission and LFU see the
   same occurrences as one process would) and looks the rows up unpooled, in one
   fbgemm TBE call per group of tables;
4. the vectors come back in one ``all_to_all_single`` per embedding dim, and the
   requesting rank pools them (``embedding_bag`` over the unique vectors, sum or mean,
   per-id weights) or returns them as sequences.

Backward runs the exchange in reverse: each rank's gradient for the unique vectors
goes to the owner, divided by ``W`` (the mean over the global batch, as DDP does for
dense parameters and torchrec for its sharded tables), and the owner's fused
optimizer updates its rows inside backward. Admission and eviction are those of one
process, per owner: an id is always counted, admitted, refreshed and evicted by the
same mapper; LRU/LFU/TTL pick victims among the owner's rows. A new id starts from
a vector that is a function of (seed, table, id) (:meth:`TableSlot.initial_for_ids`),
so a run starts from the same embeddings whatever the world size.

The exchange uses its own torch.distributed group (gloo on CPU, nccl on CUDA), so it
never interleaves with DDP's gradient all-reduces; under Horovod it is the group
built from Horovod's rank and size (:mod:`recis.distributed.context`). Between the ranks
of one host on CPU, the blocking exchanges of the step (vectors forward, gradients
backward, and the next batch's ids sent ahead by :meth:`prefetch`) go through shared
memory instead (:mod:`recis.distributed.shm`).

State (:mod:`recis.distributed.hashed_state`) is independent of the world size: per table, the live
ids with their vectors, optimizer state, last-seen step and LFU count, as row-sharded
``ShardedTensor``\\ s (each rank writes its own rows), plus the step and the summed
count-min sketches. Loading at any world size reads an even slice of the saved rows
on each rank and sends every row to its new owner.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

from recis.config import TableConfig
from recis.embedding import HashedEmbeddingCollection, deferred_tables
from recis.embedding.collection import LookupModule
from recis.embedding.groups import mean_weights
from recis.errors import ConfigError, EmbeddingError
from recis.features import SparseFeature

from .hashed_state import ByIdState, owner_of
from .shm import SharedMemoryAllToAll, local_exchange

__all__ = [
    "HASHED_SHARDING",
    "check_hashed_kind",
    "ShardedHashedEmbeddingCollection",
    "hashed_collections",
    "owner_of",
    "place_tables",
    "shard_hashed",
]


class _Exchange(torch.autograd.Function):
    """All-to-all with uneven splits along dim 0 (``a2a(out, x, recv, send)``, blocking);
    backward sends the gradient back the same way, times ``scale``."""

    @staticmethod
    def forward(ctx, x, send: list[int], recv: list[int], a2a, scale: float):  # type: ignore[no-untyped-def,override]
        ctx.send, ctx.recv, ctx.a2a, ctx.scale = send, recv, a2a, scale
        out = x.new_empty((sum(recv), *x.shape[1:]))
        a2a(out, x.contiguous(), recv, send)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def,override]
        out = grad.new_empty((sum(ctx.send), *grad.shape[1:]))
        ctx.a2a(out, grad.contiguous(), ctx.send, ctx.recv)
        return out * ctx.scale, None, None, None, None


class _Permute(torch.autograd.Function):
    """``x[perm]`` for a permutation ``perm`` of ``x``'s rows; backward gathers by the
    inverse permutation (no zero fill, no scatter-add as for a general index)."""

    @staticmethod
    def forward(ctx, x, perm: torch.Tensor, inverse: torch.Tensor):  # type: ignore[no-untyped-def,override]
        ctx.save_for_backward(inverse)
        return x[perm]

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def,override]
        (inverse,) = ctx.saved_tensors
        return grad[inverse], None, None


class _Columns(torch.autograd.Function):
    """The pooled ``[B, width]`` output assembled from blocks of the exchange's receive
    buffer ``flat`` (one ``[B, w_r]`` block per rank): one copy forward, one copy back
    (views, splits and a cat would copy twice). ``runs``: ``(block offset, block width,
    block column, output column, columns)``."""

    @staticmethod
    def forward(ctx, flat, b: int, runs: list[tuple[int, int, int, int, int]], width: int):  # type: ignore[no-untyped-def,override]
        ctx.b, ctx.runs, ctx.size = b, runs, flat.numel()
        out = flat.new_empty((b, width))
        for off, w, c, o, n in runs:
            out[:, o : o + n] = flat[off : off + b * w].view(b, w)[:, c : c + n]
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def,override]
        b = ctx.b
        covered = sum(b * n for *_, n in ctx.runs)
        # sequence parts of the buffer (not read here) get zeros
        flat = grad.new_zeros(ctx.size) if covered < ctx.size else grad.new_empty(ctx.size)
        for off, w, c, o, n in ctx.runs:
            flat[off : off + b * w].view(b, w)[:, c : c + n] = grad[:, o : o + n]
        return flat, None, None, None


def _layout(kjt: KeyedJaggedTensor) -> tuple[int, dict[str, int], dict[str, tuple[int, int]]]:
    """Batch size, each key's index, and each key's ``(start, end)`` in ``kjt.values()``."""
    keys = kjt.keys()
    vo = [0, *np.cumsum(kjt.length_per_key()).tolist()]
    return (
        kjt.stride(),
        {k: i for i, k in enumerate(keys)},
        {k: (vo[i], vo[i + 1]) for i, k in enumerate(keys)},
    )


class _WholeRoute:
    """The input half of the whole tables' exchange for one batch: to each rank, the
    lengths and the ids (and per-id weights) of the features of the tables it holds.

    Two collectives: the sizes, then the ids once the sizes are in (:meth:`send`). On the
    process group both run in the background (the sizes start here), so a route built for
    the next batch (:meth:`ShardedHashedEmbeddingCollection.prefetch`) travels while this
    step computes; through shared memory both run in :meth:`send`, which the lookup before
    calls right after its blocking exchange. :meth:`wait` finishes them and gives what
    this rank received.
    """

    def __init__(
        self,
        coll: ShardedHashedEmbeddingCollection,
        kjt: KeyedJaggedTensor,
        b: int,
        at: dict[str, int],
        seg: dict[str, tuple[int, int]],
    ) -> None:
        self.coll, self.kjt, self.b, self.at = coll, kjt, b, at
        w = coll.world
        values, lengths = kjt.values().to(torch.int64), kjt.lengths().to(torch.int64)
        weights = kjt.weights_or_none()
        self.lengths = lengths
        self.n_of = n_of = {f: seg[f][1] - seg[f][0] for f in seg}
        self.sent = sent = [sum(n_of[f] for f in fs) for fs in coll.feats_on]
        # to each rank, in one buffer: the lengths, then the ids, of the features of its
        # tables (one collective, not two: at every collective a rank waits for the slower)
        self._ints: torch.Tensor | None = torch.cat(
            [
                x
                for fs in coll.feats_on
                for x in [lengths[at[f] * b : (at[f] + 1) * b] for f in fs]
                + [values[seg[f][0] : seg[f][1]] for f in fs]
            ]
        )
        self._floats: torch.Tensor | None = None
        if any(coll.weighted_on):  # every rank takes part, also one holding none weighted
            floats = [
                weights[seg[f][0] : seg[f][1]].float()
                if coll.weighted[f] and weights is not None
                else torch.ones(n_of[f], device=values.device)
                for r in range(w)
                if coll.weighted_on[r]
                for f in coll.feats_on[r]
            ]
            self._floats = torch.cat(floats) if floats else torch.zeros(0, device=values.device)
        # Through shared memory, sizes and ids both go in send(): right after the blocking
        # exchange of the lookup before (the ranks are together there), in about 0.1 ms
        # (12 alternating 2-process runs: median 70,700 samples/s against 66,800 with them
        # in the background on gloo). On the process group, the sizes start now and the
        # ids in send(), in the background.
        self._size_table = torch.tensor([[b, n] for n in sent], dtype=torch.int64)
        self._sizes: Callable[[], torch.Tensor] | None = None
        if coll.shm is None:
            self._sizes = self._start(self._size_table, [1] * w, [1] * w)
        self._ids: Callable[[], torch.Tensor] | None = None
        self._weights: Callable[[], torch.Tensor] | None = None

    def _start(
        self, x: torch.Tensor, send: list[int], recv: list[int]
    ) -> Callable[[], torch.Tensor]:
        """The all-to-all of ``x`` started (process group) or done (shared memory); the
        returned function gives the result."""
        if self.coll.shm is None:
            return self.coll._a2a_start(x, send, recv)
        out = x.new_empty((sum(recv), *x.shape[1:]))
        self.coll.shm(out, x.contiguous(), recv, send)
        return lambda: out

    def send(self) -> None:
        """Start sending the ids, once the sizes are in (again: nothing)."""
        if self._ids is not None:
            return
        c, w = self.coll, self.coll.world
        if self._sizes is None:  # shared memory: the sizes go now
            self._sizes = self._start(self._size_table, [1] * w, [1] * w)
        sizes = self._sizes()
        self.bs, self.ns = sizes[:, 0].tolist(), sizes[:, 1].tolist()  # per source rank
        nf = len(c.feats_on[c.rank])
        assert self._ints is not None
        self._ids = self._start(
            self._ints,
            [len(fs) * self.b + n for fs, n in zip(c.feats_on, self.sent)],
            [nf * bn + n for bn, n in zip(self.bs, self.ns)],
        )
        if self._floats is not None:
            self._weights = self._start(
                self._floats,
                [self.sent[r] if c.weighted_on[r] else 0 for r in range(w)],
                self.ns if c.weighted_on[c.rank] else [0] * w,
            )
        self._ints = self._floats = None

    def wait(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What this rank received: every source rank's lengths and ids, one block per
        source, and their weights if this rank holds a weighted table."""
        self.send()
        assert self._ids is not None
        got = self._ids()
        weights = self._weights() if self._weights is not None else None
        return got, weights if self.coll.weighted_on[self.coll.rank] else None


def _inverse(perm: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(perm)
    out[perm] = torch.arange(perm.numel(), device=perm.device)
    return out


class ShardedHashedEmbeddingCollection(ByIdState, LookupModule):
    """A :class:`~recis.embedding.HashedEmbeddingCollection` over ranks: every table either
    kept whole on one rank (table-wise) or split by id over all ranks (row-wise).

    Same forward contract as the collection it replaces (``forward``,
    ``forward_sequences``, ``lookup``); every forward is a collective, so all ranks run
    the same number of steps.

    The owner-side tables are not submodules: DDP must neither all-reduce nor
    broadcast them (each rank holds different rows), and they update in backward.

    Args:
        source: the single-process collection (its tables, features, seed and device).
        rank, world_size: this process in the run.
        group: process group of the exchange (None: the default group).
        exchange: route ids to their owners (default: when ``world_size > 1``; one process
            then runs the plain pooled lookup, which is the same step; tests set it to run
            the routing code in one process).
        placement: ``{table: rank}`` for the tables kept whole on one rank; the others are
            split by id (:func:`place_tables` computes it from sharding kinds).
        shm: the ranks' shared-memory all-to-all when they share a host
            (:func:`~recis.distributed.shm.local_exchange`; None: the process group).
    """

    def __init__(
        self,
        source: HashedEmbeddingCollection,
        rank: int = 0,
        world_size: int = 1,
        group: dist.ProcessGroup | None = None,
        exchange: bool | None = None,
        placement: dict[str, int] | None = None,
        shm: SharedMemoryAllToAll | None = None,
    ) -> None:
        super().__init__()
        self.rank, self.world, self.group = rank, world_size, group
        # one process owns every id: the plain pooled lookup is the same step, faster
        self.exchange = world_size > 1 if exchange is None else exchange
        self.device = source.device
        self.table_names = list(source.tables)
        self.features_of = {t: list(source.where_features(t)) for t in self.table_names}
        self.weighted = dict(source.weighted)
        self.pooled_features = list(source.pooled_features)
        self.sequence_features = list(source.sequence_features)
        self.configs = dict(source.tables)
        self.placement = dict(placement or {})
        self._table_of = dict(source.table_of)  # feature -> table, in feature order
        for name, t in source.tables.items():
            if t.mapper != "hash":
                raise ConfigError(
                    f"model.tables.{name}.mapper: 'none' tables cannot be sharded by id; "
                    "use mapper: hash"
                )
        for name, r in self.placement.items():
            if name not in self.configs or not 0 <= r < world_size:
                raise ConfigError(
                    f"placement of hashed table {name!r} on rank {r}: tables are "
                    f"{self.table_names}, ranks 0..{world_size - 1}"
                )

        def local(tables: list[str], split: bool) -> list[TableConfig]:
            out = []
            for name in tables:
                t = self.configs[name]
                g, j = source.where[name]
                parts = world_size if split else 1
                out.append(
                    dataclasses.replace(
                        t,
                        pooling="none" if split and self.exchange else t.pooling,
                        capacity=math.ceil(t.capacity / parts),
                        max_capacity=math.ceil(t.max_capacity / parts) if t.max_capacity else None,
                        optimizer=source.groups[g].opt,
                        init_scale=source.groups[g].tables[j].init_scale,  # capacity's default
                    )
                )
            return out

        def features(tables: list[str]) -> list[SparseFeature]:
            # in the source's feature order (the order of its output keys)
            return [
                SparseFeature(name=f, table=t, weight_column=f if self.weighted[f] else None)
                for f, t in self._table_of.items()
                if t in tables
            ]

        # the source's seed: ids start from the same vectors as in one process
        def store(tables: list[str], feats: list[SparseFeature], split: bool):  # noqa: ANN202
            if not tables:
                return None
            coll = HashedEmbeddingCollection(
                local(tables, split), feats, self.device, seed=source.seed
            )
            coll.train(source.training)
            if world_size > 1:  # errors (a full table) name the shard
                for name, mapper in coll.mappers.items():
                    where = f"shard of rank {rank} of {world_size}" if split else f"on rank {rank}"
                    mapper.name = f"{name} ({where})"
            return coll

        # tables split by id: each rank's part, looked up per id (one feature per table)
        self.split = [t for t in self.table_names if t not in self.placement]
        whole_here = [t for t, r in self.placement.items() if r == rank]
        if not self.exchange:  # one process: one plain collection of every table
            self.split, whole_here = self.table_names, []
        self._store = [
            store(
                self.split,
                [SparseFeature(name=t, table=t) for t in self.split]
                if self.exchange
                else features(self.split),
                split=True,
            ),
            store(whole_here, features(whole_here), split=False),
            None,
        ]
        # shapes and dtypes of the whole tables other ranks hold, for the state's templates
        elsewhere = [t for t in self.placement if t not in whole_here and self.exchange]
        if elsewhere:
            with deferred_tables():
                self._store[2] = store(elsewhere, features(elsewhere), split=False)
        self.step = source.step
        # exchange groups of split tables: tables of one dim travel together (dim-major)
        dims = {t: self.configs[t].dim for t in self.table_names}
        self.order = sorted(self.table_names, key=lambda t: dims[t])
        self.split = [t for t in self.order if t in self.split]
        self.dims = sorted({dims[t] for t in self.split})
        self.tables_of = {d: [t for t in self.split if dims[t] == d] for d in self.dims}
        # whole tables: per rank, the features it looks up, pooled ones with their dims
        self.feats_on, self.pooled_on, self.seq_on, self.weighted_on = [], [], [], []
        for r in range(world_size):
            fs = [f.name for f in features([t for t, o in self.placement.items() if o == r])]
            self.feats_on.append(fs)
            self.pooled_on.append([(f, self._dim(f)) for f in fs if f in self.pooled_features])
            self.seq_on.append([(f, self._dim(f)) for f in fs if f in self.sequence_features])
            self.weighted_on.append(any(self.weighted[f] for f in fs))
        self.pooled_width = [sum(d for _, d in p) for p in self.pooled_on]
        # pooled features of whole tables, in output order
        held = {f for fs in self.feats_on for f in fs}
        self.whole_pooled = [f for f in self.pooled_features if f in held]
        self.whole_pooled_dim = sum(self._dim(f) for f in self.whole_pooled)
        self._pending_load: dict[str, Any] | None = None
        self._ahead: list[_WholeRoute] = []  # routes of batches to come (prefetch)
        self.shm = shm
        self.prefetched_lookups = 0  # lookups that found their ids sent ahead

    def _dim(self, feature: str) -> int:
        return self.configs[self._table_of[feature]].dim

    @property
    def local(self) -> HashedEmbeddingCollection | None:
        """This rank's part of the tables split by id (the ids :func:`owner_of` gives it;
        in one process without exchange: every table)."""
        return self._store[0]

    @property
    def whole(self) -> HashedEmbeddingCollection | None:
        """The whole tables this rank holds (table-wise), or None."""
        return self._store[1]

    def holder(self, table: str) -> HashedEmbeddingCollection | None:
        """The collection holding ``table``'s rows on this rank (None: another rank's)."""
        for s in self._store[:2]:
            if s is not None and table in s.tables:
                return s
        return None

    def train(self, mode: bool = True) -> ShardedHashedEmbeddingCollection:
        super().train(mode)
        for s in self._store:
            if s is not None:
                s.train(mode)
        return self

    def _tick(self) -> None:
        """Count a forward like the plain collection (training only), on every store."""
        if self.training:
            self.step += 1
        for s in self._store[:2]:
            if s is not None:  # their own forward counts it again
                s.step = self.step - int(self.training)

    # ------------------------------------------------------------------ exchange
    def _alltoall(self, x: torch.Tensor, send: list[int], recv: list[int], scale: float = 1.0):
        if self.world == 1:
            return x
        return _Exchange.apply(x, send, recv, self._blocking_a2a, scale)

    def _blocking_a2a(
        self, out: torch.Tensor, x: torch.Tensor, recv: list[int], send: list[int]
    ) -> None:
        """The step's blocking exchanges (rows forward, gradients backward): through shared
        memory between the ranks of one host (:mod:`recis.distributed.shm`), else the
        process group."""
        if self.shm is not None:
            self.shm(out, x, recv, send)
        else:
            dist.all_to_all_single(out, x, recv, send, group=self.group)

    def lookup(self, kjt: KeyedJaggedTensor) -> tuple[KeyedTensor | None, dict[str, JaggedTensor]]:
        """Pooled KeyedTensor (or None) and sequence JaggedTensors (collective)."""
        keys = kjt.keys()
        missing = [f for f in self.pooled_features + self.sequence_features if f not in keys]
        if missing:
            raise EmbeddingError(f"input has no feature(s) {missing} (keys: {keys})")
        values = kjt.values()
        if values.dtype.is_floating_point or values.dtype == torch.bool:
            raise EmbeddingError(f"ids must be integers, got {values.dtype}")
        self._tick()
        if not self.exchange:
            assert self.local is not None
            return self.local.lookup(kjt)
        b, at, seg = _layout(kjt)
        route = self._route_of(kjt, b, at, seg) if self.placement else None
        pooled: dict[str, torch.Tensor] = {}
        seqs: dict[str, JaggedTensor] = {}
        if self.split:
            self._split_lookup(kjt, b, at, seg, pooled, seqs)
        whole = self._whole_lookup(route, seqs) if route is not None else None
        for ahead in self._ahead:  # the next batch's ids: their sizes are in by now
            ahead.send()
        if whole is not None and len(self.whole_pooled) == len(self.pooled_features):
            values = whole  # every pooled feature is a whole table's: already in order
        elif self.pooled_features:
            if whole is not None:
                dims = [self._dim(f) for f in self.whole_pooled]
                pooled.update(zip(self.whole_pooled, whole.split(dims, dim=1)))
            values = torch.cat([pooled[f] for f in self.pooled_features], dim=1)
        else:
            return None, seqs
        kt = KeyedTensor(
            keys=self.pooled_features,
            length_per_key=[self._dim(f) for f in self.pooled_features],
            values=values,
        )
        return kt, seqs

    @property
    def sends_ahead(self) -> bool:
        """Whether :meth:`prefetch` sends anything: several ranks and whole tables."""
        return self.exchange and bool(self.placement)

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
        keys = set(kjt.keys())
        if any(f not in keys for fs in self.feats_on for f in fs):
            return False
        self._ahead.append(_WholeRoute(self, kjt, *_layout(kjt)))
        self._drop_ahead(len(self._ahead) - 2)
        return True

    def _drop_ahead(self, n: int) -> None:
        """Finish and drop the ``n`` oldest routes sent ahead (their collectives ran on
        every rank: finished, not abandoned)."""
        for route in self._ahead[: max(n, 0)]:
            route.wait()
        del self._ahead[: max(n, 0)]

    def _route_of(
        self, kjt: KeyedJaggedTensor, b: int, at: dict[str, int], seg: dict[str, tuple[int, int]]
    ) -> _WholeRoute:
        """The route sent ahead for ``kjt`` if there is one, else one started now."""
        for i, route in enumerate(self._ahead):
            if route.kjt is kjt:
                self._drop_ahead(i)
                self.prefetched_lookups += 1
                return self._ahead.pop(0)
        return _WholeRoute(self, kjt, b, at, seg)

    def _whole_lookup(
        self, route: _WholeRoute, seqs: dict[str, JaggedTensor]
    ) -> torch.Tensor | None:
        """Features of whole tables: each rank's bags go to the table's rank (``route``),
        which looks them up for every rank at once (fused pooled lookup over ``sum B``
        bags) and sends back each rank's pooled rows and sequence vectors. Returns the
        pooled features of whole tables as one ``[B, sum of D]`` tensor in output order
        (None if none); puts sequences into ``seqs``."""
        w, me = self.world, self.rank
        got, wgot = route.wait()
        b, at, lengths, n_of = route.b, route.at, route.lengths, route.n_of
        bs, ns = route.bs, route.ns
        nf = len(self.feats_on[me])
        # 2. owner: one KJT of every source's bags, feature-major, looked up at once
        if nf:
            assert self.whole is not None
            blocks = got.split([nf * bn + n for bn, n in zip(bs, ns)])
            lens = [x[: nf * bn].view(nf, bn) for x, bn in zip(blocks, bs)]
            per = [ln.sum(1).tolist() for ln in lens]  # [source][feature] id counts
            vals = [x[nf * bn :].split(per[s]) for s, (x, bn) in enumerate(zip(blocks, bs))]
            wts = None if wgot is None else [x.split(per[s]) for s, x in enumerate(wgot.split(ns))]
            order = [(s, i) for i in range(nf) for s in range(w)]
            local = KeyedJaggedTensor(
                keys=self.feats_on[me],
                values=torch.cat([vals[s][i] for s, i in order]),
                lengths=torch.cat(lens, dim=1).reshape(-1),
                weights=None if wts is None else torch.cat([wts[s][i] for s, i in order]),
                stride=sum(bs),
            )
            kt, sq = self.whole.lookup(local)
            # 3. back to each source: its pooled rows, then its ids' vectors per sequence
            pdim = self.pooled_width[me]
            flat = kt.values().reshape(-1) if kt is not None else None
            if not self.seq_on[me] and flat is not None:
                back = flat  # rows of one source are contiguous: no copy
            else:
                col = {f: i for i, (f, _) in self._seq_cols(me)}
                rows = [] if flat is None else flat.split([n * pdim for n in bs])
                vec = {f: sq[f].values().split([p[col[f]] for p in per]) for f in col}
                back = torch.cat(
                    [
                        x.reshape(-1)
                        for s in range(w)
                        for x in ([rows[s]] if rows else []) + [vec[f][s] for f in col]
                    ]
                )
            back_sizes = [
                bs[s] * pdim + sum(per[s][col] * d for col, (_, d) in self._seq_cols(me))
                for s in range(w)
            ]
        else:  # nothing held here; an empty part keeps every rank in backward's exchange
            back = torch.zeros(0, device=self.device, requires_grad=torch.is_grad_enabled())
            back_sizes = [0] * w
        recv = [
            b * self.pooled_width[r] + sum(n_of[f] * d for f, d in self.seq_on[r]) for r in range(w)
        ]
        vecs = self._alltoall(back, back_sizes, recv, scale=1.0 / w)
        # 4. sequences: views of each rank's block; pooled: one copy into output order
        for r, blk in enumerate(vecs.split(recv)):
            sizes = [b * self.pooled_width[r], *(n_of[f] * d for f, d in self.seq_on[r])]
            parts = blk.split(sizes)[1:]
            for (f, d), part in zip(self.seq_on[r], parts):
                ln = lengths[at[f] * b : (at[f] + 1) * b]
                seqs[f] = JaggedTensor(values=part.view(-1, d), lengths=ln)
        if not self.whole_pooled:
            return None
        offsets = np.cumsum([0, *recv]).tolist()
        return _Columns.apply(vecs, b, self._column_runs(offsets), self.whole_pooled_dim)

    def _seq_cols(self, r: int) -> list[tuple[int, tuple[str, int]]]:
        """Rank ``r``'s sequence features with their index among its features."""
        return [(self.feats_on[r].index(f), (f, d)) for f, d in self.seq_on[r]]

    def _column_runs(self, offsets: list[int]) -> list[tuple[int, int, int, int, int]]:
        """Copies from the receive buffer (rank ``r``'s block at ``offsets[r]``) into the
        ``[B, sum of D]`` pooled output: ``(block offset, block width, block column,
        output column, width)``, adjacent features merged."""
        starts = np.cumsum([0, *map(self._dim, self.whole_pooled)]).tolist()
        out_col = dict(zip(self.whole_pooled, starts))
        runs: list[list[int]] = []
        for r in range(self.world):
            width = self.pooled_width[r]
            c = 0
            for f, d in self.pooled_on[r]:
                last = runs[-1] if runs else None
                if (
                    last
                    and last[0] == offsets[r]
                    and last[2] + last[4] == c
                    and (last[3] + last[4] == out_col[f])
                ):
                    last[4] += d
                else:
                    runs.append([offsets[r], width, c, out_col[f], d])
                c += d
        return [tuple(x) for x in runs]  # type: ignore[misc]

    def _split_lookup(
        self,
        kjt: KeyedJaggedTensor,
        b: int,
        at: dict[str, int],
        seg: dict[str, tuple[int, int]],
        pooled: dict[str, torch.Tensor],
        seqs: dict[str, JaggedTensor],
    ) -> None:
        """Features of tables split by id: deduplicate, route ids to owners, pool here."""
        values, lengths = kjt.values(), kjt.lengths()
        # 1. per table: unique ids, counts, and each id's index into them
        uniq, inverse, counts = {}, {}, {}
        for t in self.split:
            ids = torch.cat([values[seg[f][0] : seg[f][1]] for f in self.features_of[t]])
            uniq[t], inverse[t], counts[t] = torch.unique(
                ids.to(torch.int64), return_inverse=True, return_counts=True
            )
        assert self.local is not None
        if self.world == 1:  # this process owns every id: no exchange, no reordering
            emb = self.local.embed_ids(uniq, counts)
            vectors = {d: torch.cat([emb[t] for t in self.tables_of[d]]) for d in self.dims}
        else:
            vectors = self._exchange(uniq, counts)
        for d in self.dims:
            tabs = self.tables_of[d]
            first = dict(zip(tabs, [0, *np.cumsum([uniq[t].numel() for t in tabs]).tolist()]))
            inputs = (inverse, first, lengths, kjt.weights_or_none(), seg, at, b)
            self._pool(vectors[d], tabs, *inputs, pooled, seqs)

    def _exchange(
        self, uniq: dict[str, torch.Tensor], counts: dict[str, torch.Tensor]
    ) -> dict[int, torch.Tensor]:
        """Steps 2-4 over ranks: each table's unique ids (and counts) to their owners, the
        owners' vectors back; ``{dim: [U, D]}``, the unique ids of that dim's tables in
        ``self.split``, each table's in the order of ``uniq[t]``."""
        # 2. to the owners: sorted by (owner, table), table order dim-major
        nt, w = len(self.split), self.world
        sizes = torch.tensor([uniq[t].numel() for t in self.split])
        all_ids = torch.cat([uniq[t] for t in self.split])
        all_counts = torch.cat([counts[t] for t in self.split])
        table_idx = torch.repeat_interleave(
            torch.arange(nt, device=all_ids.device), sizes.to(all_ids.device)
        )
        key = owner_of(all_ids, w) * nt + table_idx
        order = torch.argsort(key, stable=True)
        send = torch.bincount(key, minlength=w * nt).view(w, nt).cpu()
        recv = self._counts(send)
        got = self._alltoall(
            torch.stack([all_ids[order], all_counts[order]], 1),
            send.sum(1).tolist(),
            recv.sum(1).tolist(),
        )
        # 3. owner side: received (source, table) blocks regrouped table-major, looked up
        rtable = torch.repeat_interleave(torch.arange(nt).repeat(w), recv.flatten())
        rorder = torch.argsort(rtable.to(got.device), stable=True)
        per_table = recv.sum(0).tolist()
        r_ids = got[rorder, 0].split(per_table)
        r_counts = got[rorder, 1].split(per_table)
        assert self.local is not None
        emb = self.local.embed_ids(dict(zip(self.split, r_ids)), dict(zip(self.split, r_counts)))
        back_pos = _inverse(rorder)  # table-major position of each received entry
        table_of_sent = table_idx[order]
        out: dict[int, torch.Tensor] = {}
        t0 = 0
        for d in self.dims:
            # 4. vectors of this dim back to their requesters, in the order they came
            tabs = self.tables_of[d]
            t1 = t0 + len(tabs)
            mine = (rtable >= t0) & (rtable < t1)
            start = sum(per_table[:t0])
            block = torch.cat([emb[t] for t in tabs])
            vecs = self._alltoall(
                _Permute.apply(
                    block, rows := back_pos[mine.to(back_pos.device)] - start, _inverse(rows)
                ),
                recv[:, t0:t1].sum(1).tolist(),
                send[:, t0:t1].sum(1).tolist(),
                scale=1.0 / w,
            )
            # rows came back in send order: put them in the order of the unique ids
            sent = (table_of_sent >= t0) & (table_of_sent < t1)
            slot = order[sent] - int(sizes[:t0].sum())
            out[d] = _Permute.apply(vecs, _inverse(slot), slot)  # slot: a permutation
            t0 = t1
        return out

    def _pool(
        self,
        vectors: torch.Tensor,
        tables: list[str],
        inverse: dict[str, torch.Tensor],
        first: dict[str, int],
        lengths: torch.Tensor,
        weights: torch.Tensor | None,
        seg: dict[str, tuple[int, int]],
        at: dict[str, int],
        b: int,
        pooled: dict[str, torch.Tensor],
        seqs: dict[str, JaggedTensor],
    ) -> None:
        """Pool the features of ``tables`` (one dim) from ``vectors`` ``[U, D]``, the unique
        ids of those tables in order (table ``t``'s from row ``first[t]``): one
        ``embedding_bag`` for all their pooled features, into ``pooled`` ``{f: [B, D]}``;
        sequence features into ``seqs``."""
        names, idx, lens, psw = [], [], [], []
        weighted = False
        for t in tables:
            o = 0
            for f in self.features_of[t]:
                n = seg[f][1] - seg[f][0]
                i = inverse[t][o : o + n] + first[t]
                o += n
                ln = lengths[at[f] * b : (at[f] + 1) * b]
                if self.configs[t].pooling == "none":
                    seqs[f] = JaggedTensor(values=vectors[i], lengths=ln)
                    continue
                w = None
                if self.weighted[f] and weights is not None:
                    w = weights[seg[f][0] : seg[f][1]].float()
                if self.configs[t].pooling == "mean":
                    off = torch.zeros(b + 1, dtype=torch.int64, device=ln.device)
                    torch.cumsum(ln, 0, out=off[1:])
                    w = mean_weights(off, w)
                weighted |= w is not None
                names.append(f)
                idx.append(i)
                lens.append(ln)
                psw.append(w if w is not None else torch.ones(n, device=vectors.device))
        if not names:
            return
        lens_all = torch.cat(lens)
        offsets = torch.zeros(lens_all.numel(), dtype=torch.int64, device=vectors.device)
        torch.cumsum(lens_all[:-1], 0, out=offsets[1:])
        out = F.embedding_bag(
            torch.cat(idx),
            vectors,
            offsets,
            mode="sum",
            per_sample_weights=torch.cat(psw).to(vectors.dtype) if weighted else None,
        )
        pooled.update(zip(names, out.view(len(names), b, -1)))


def hashed_collections(model: nn.Module) -> Iterator[tuple[str, HashedEmbeddingCollection]]:
    """``(path, collection)`` for every hashed collection in ``model``."""
    for name, m in model.named_modules():
        if isinstance(m, HashedEmbeddingCollection):
            yield name, m


HASHED_SHARDING = ("table_wise", "row_wise", "auto")


def check_hashed_kind(table: str, kind: str) -> None:
    """ConfigError unless ``kind`` is a sharding a hashed table can take."""
    if kind not in HASHED_SHARDING:
        raise ConfigError(
            f"distributed.sharding.{table}: {kind!r}: a table of the hashed engine is "
            f"one of {HASHED_SHARDING} (row_wise: split by id over all ranks)"
        )


def place_tables(
    tables: list[TableConfig], world_size: int, kinds: dict[str, str] | None = None
) -> dict[str, int]:
    """Where the hashed tables go: ``{table: rank}`` for those kept whole; the rest are
    split by id over all ranks.

    Per table kind (``kinds``, default ``auto``): ``table_wise`` keeps it whole;
    ``row_wise`` splits it by id; ``auto`` keeps it whole unless it is larger than
    ``1 / world_size`` of all the tables together (no placement could balance it), and
    splits it then. Whole tables go to ranks in contiguous runs of ``tables``' order (the
    features' order), each rank taking about ``1 / world_size`` of their size (capacity x
    dim): a table goes to rank ``floor(W * midpoint / total)``. In that layout a batch's
    ids are already grouped by destination, so they are sent without a copy.
    """
    kinds = kinds or {}
    size = {t.name: t.capacity * t.dim for t in tables}
    total = sum(size.values())
    whole = []
    for t in tables:
        kind = kinds.get(t.name, "auto")
        check_hashed_kind(t.name, kind)
        if kind == "table_wise" or (kind == "auto" and size[t.name] * world_size <= total):
            whole.append(t.name)
    if world_size == 1:
        return {}
    held = sum(size[t] for t in whole)
    out, acc = {}, 0
    for t in whole:
        out[t] = min(world_size - 1, int(world_size * (acc + size[t] / 2) / held))
        acc += size[t]
    return out


def shard_hashed(
    model: nn.Module,
    rank: int = 0,
    world_size: int = 1,
    group: dist.ProcessGroup | None = None,
    kinds: dict[str, str] | None = None,
) -> int:
    """Replace every :class:`HashedEmbeddingCollection` in ``model`` (in place) by a
    :class:`ShardedHashedEmbeddingCollection` over ``world_size`` ranks, tables placed by
    :func:`place_tables` with ``kinds`` (table -> sharding kind); returns how many."""
    found = list(hashed_collections(model))
    # ranks of one host exchange rows and gradients through shared memory (collective)
    shm = local_exchange(group, found[0][1].device) if found and world_size > 1 else None
    for path, coll in found:
        if not path:
            raise TypeError("shard_hashed: pass the model that holds the collection")
        parent_path, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        in_feature_order = dict.fromkeys(coll.table_of.values())
        placement = place_tables([coll.tables[t] for t in in_feature_order], world_size, kinds)
        sharded = ShardedHashedEmbeddingCollection(
            coll, rank, world_size, group, placement=placement, shm=shm
        )
        setattr(parent, attr, sharded)
    return len(found)
