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
built from Horovod's rank and size (:mod:`recis.distributed.context`).

State (:mod:`recis.distributed.hashed_state`) is independent of the world size: per table, the live
ids with their vectors, optimizer state, last-seen step and LFU count, as row-sharded
``ShardedTensor``\\ s (each rank writes its own rows), plus the step and the summed
count-min sketches. Loading at any world size reads an even slice of the saved rows
on each rank and sends every row to its new owner.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

from recis.embedding import HashedEmbeddingCollection
from recis.embedding.collection import LookupModule
from recis.embedding.groups import mean_weights
from recis.errors import ConfigError, EmbeddingError
from recis.features import SparseFeature

from .hashed_state import ByIdState, owner_of

__all__ = ["ShardedHashedEmbeddingCollection", "hashed_collections", "owner_of", "shard_hashed"]


class _Exchange(torch.autograd.Function):
    """``all_to_all_single`` with uneven splits along dim 0; backward sends the
    gradient back the same way, times ``scale``."""

    @staticmethod
    def forward(ctx, x, send: list[int], recv: list[int], group, scale: float):  # type: ignore[no-untyped-def,override]
        ctx.send, ctx.recv, ctx.group, ctx.scale = send, recv, group, scale
        out = x.new_empty((sum(recv), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), recv, send, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def,override]
        out = grad.new_empty((sum(ctx.send), *grad.shape[1:]))
        dist.all_to_all_single(out, grad.contiguous(), ctx.send, ctx.recv, group=ctx.group)
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


def _inverse(perm: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(perm)
    out[perm] = torch.arange(perm.numel(), device=perm.device)
    return out


class ShardedHashedEmbeddingCollection(ByIdState, LookupModule):
    """A :class:`~recis.embedding.HashedEmbeddingCollection` split by id over ranks.

    Same forward contract as the collection it replaces (``forward``,
    ``forward_sequences``, ``lookup``); every forward is a collective, so all ranks run
    the same number of steps.

    The owner-side tables are not submodules: DDP must neither all-reduce nor
    broadcast them (each rank holds different rows), and they update in backward.

    Args:
        source: the single-process collection (its tables, features, seed and device).
        rank, world_size: this process in the run.
        group: process group of the exchange (None: the default group).
        exchange: route ids through the owner-side unpooled lookup (default: when
            ``world_size > 1``; one process then runs the plain pooled lookup, which is the
            same step; tests set it to run the routing code in one process).
    """

    def __init__(
        self,
        source: HashedEmbeddingCollection,
        rank: int = 0,
        world_size: int = 1,
        group: dist.ProcessGroup | None = None,
        exchange: bool | None = None,
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
        local = []
        for name, t in source.tables.items():
            if t.mapper != "hash":
                raise ConfigError(
                    f"model.tables.{name}.mapper: 'none' tables cannot be sharded by id; "
                    "use mapper: hash"
                )
            g, j = source.where[name]
            local.append(
                dataclasses.replace(
                    t,
                    pooling="none" if self.exchange else t.pooling,
                    capacity=math.ceil(t.capacity / world_size),
                    max_capacity=(
                        math.ceil(t.max_capacity / world_size) if t.max_capacity else None
                    ),
                    optimizer=source.groups[g].opt,
                    init_scale=source.groups[g].tables[j].init_scale,  # capacity's default
                )
            )
        # the source's seed: ids start from the same vectors as in one process
        self._store = [
            HashedEmbeddingCollection(
                local,
                (
                    [SparseFeature(name=t.name, table=t.name) for t in local]
                    if self.exchange
                    else [
                        SparseFeature(
                            name=f, table=t, weight_column=f if self.weighted[f] else None
                        )
                        for t in self.table_names
                        for f in self.features_of[t]
                    ]
                ),
                self.device,
                seed=source.seed,
            )
        ]
        self._store[0].train(source.training)
        self.local.step = source.step
        if world_size > 1:  # errors (a full table) name the shard
            for name, mapper in self.local.mappers.items():
                mapper.name = f"{name} (shard of rank {rank} of {world_size})"
        # exchange groups: tables of one dim travel together; table order is dim-major
        dims = {t: self.configs[t].dim for t in self.table_names}
        self.order = sorted(self.table_names, key=lambda t: dims[t])
        self.dims = sorted(set(dims.values()))
        self.dim_of = dims
        self.tables_of = {d: [t for t in self.order if dims[t] == d] for d in self.dims}
        self._pending_load: dict[str, Any] | None = None

    @property
    def local(self) -> HashedEmbeddingCollection:
        """This rank's owner-side tables (the ids :func:`owner_of` gives this rank)."""
        return self._store[0]

    def train(self, mode: bool = True) -> ShardedHashedEmbeddingCollection:
        super().train(mode)
        self.local.train(mode)
        return self

    # ------------------------------------------------------------------ exchange
    def _alltoall(self, x: torch.Tensor, send: list[int], recv: list[int], scale: float = 1.0):
        if self.world == 1:
            return x
        return _Exchange.apply(x, send, recv, self.group, scale)

    def _counts(self, send: torch.Tensor) -> torch.Tensor:
        """Each rank's ``[W, T]`` send counts -> what this rank receives ``[W, T]``."""
        if self.world == 1:
            return send
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send, group=self.group)
        return recv

    def lookup(self, kjt: KeyedJaggedTensor) -> tuple[KeyedTensor | None, dict[str, JaggedTensor]]:
        """Pooled KeyedTensor (or None) and sequence JaggedTensors (collective)."""
        keys = kjt.keys()
        missing = [f for f in self.pooled_features + self.sequence_features if f not in keys]
        if missing:
            raise EmbeddingError(f"input has no feature(s) {missing} (keys: {keys})")
        values, lengths = kjt.values(), kjt.lengths()
        if values.dtype.is_floating_point or values.dtype == torch.bool:
            raise EmbeddingError(f"ids must be integers, got {values.dtype}")
        b = kjt.stride()
        at = {k: i for i, k in enumerate(keys)}
        vo = [0, *np.cumsum(kjt.length_per_key()).tolist()]
        seg = {k: (vo[i], vo[i + 1]) for i, k in enumerate(keys)}
        # 1. per table: unique ids, counts, and each id's index into them
        uniq, inverse, counts = {}, {}, {}
        for t in self.order:
            ids = torch.cat([values[seg[f][0] : seg[f][1]] for f in self.features_of[t]])
            uniq[t], inverse[t], counts[t] = torch.unique(
                ids.to(torch.int64), return_inverse=True, return_counts=True
            )
        if not self.exchange:
            return self.local.lookup(kjt)
        if self.world == 1:  # this process owns every id: no exchange, no reordering
            emb = self.local.embed_ids(uniq, counts)
            vectors = {d: torch.cat([emb[t] for t in self.tables_of[d]]) for d in self.dims}
        else:
            vectors = self._exchange(uniq, counts)
        pooled: dict[str, torch.Tensor] = {}
        seqs: dict[str, JaggedTensor] = {}
        for d in self.dims:
            tabs = self.tables_of[d]
            first = dict(zip(tabs, [0, *np.cumsum([uniq[t].numel() for t in tabs]).tolist()]))
            inputs = (inverse, first, lengths, kjt.weights_or_none(), seg, at, b)
            self._pool(vectors[d], tabs, *inputs, pooled, seqs)
        kt = None
        if self.pooled_features:
            kt = KeyedTensor(
                keys=self.pooled_features,
                length_per_key=[pooled[f].shape[1] for f in self.pooled_features],
                values=torch.cat([pooled[f] for f in self.pooled_features], dim=1),
            )
        return kt, seqs

    def _exchange(
        self, uniq: dict[str, torch.Tensor], counts: dict[str, torch.Tensor]
    ) -> dict[int, torch.Tensor]:
        """Steps 2-4 over ranks: each table's unique ids (and counts) to their owners, the
        owners' vectors back; ``{dim: [U, D]}``, the unique ids of that dim's tables in
        ``self.order``, each table's in the order of ``uniq[t]``."""
        # 2. to the owners: sorted by (owner, table), table order dim-major
        nt, w = len(self.order), self.world
        sizes = torch.tensor([uniq[t].numel() for t in self.order])
        all_ids = torch.cat([uniq[t] for t in self.order])
        all_counts = torch.cat([counts[t] for t in self.order])
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
        emb = self.local.embed_ids(dict(zip(self.order, r_ids)), dict(zip(self.order, r_counts)))
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


def shard_hashed(
    model: nn.Module, rank: int = 0, world_size: int = 1, group: dist.ProcessGroup | None = None
) -> int:
    """Replace every :class:`HashedEmbeddingCollection` in ``model`` (in place) by a
    :class:`ShardedHashedEmbeddingCollection` over ``world_size`` ranks; returns how many."""
    found = list(hashed_collections(model))
    for path, coll in found:
        if not path:
            raise TypeError("shard_hashed: pass the model that holds the collection")
        parent_path, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, attr, ShardedHashedEmbeddingCollection(coll, rank, world_size, group))
    return len(found)
