"""Lookup of the tables split by id: deduplicate, route the ids to their owners, pool here.

Per table, the batch's ids are deduplicated (``torch.unique``) with their counts; ids and
counts go to their owners (:class:`~recis.distributed.embedding.router.SplitRoute`); each
owner maps what it received (counts included, so admission and LFU see the same
occurrences as one process would) and looks the rows up unpooled in its local collection;
the vectors come back in one exchange per embedding dim (gradients go back the same way,
divided by ``W``: the mean over the global batch), and the requesting rank pools them
(``embedding_bag`` over the unique vectors, sum or mean, per-id weights) or returns them
as sequences.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from recis.config import TableConfig
from recis.embedding import HashedEmbeddingCollection
from recis.embedding.groups import mean_weights

from .exchange import Links, inverse_permutation, permute_rows
from .router import BatchLayout, SplitRoute

__all__ = ["SplitLookup"]


class SplitLookup:
    """The lookup of the tables split by id, on one rank.

    Args:
        tables: the split tables, dim-major (tables of one dim travel together).
        features_of: each table's features.
        configs: every table's config.
        weighted: whether each feature has per-id weights.
        local: this rank's part of the split tables (pooling ``none``, one feature each).
        links: the transports.
    """

    def __init__(
        self,
        tables: list[str],
        features_of: dict[str, list[str]],
        configs: dict[str, TableConfig],
        weighted: dict[str, bool],
        local: HashedEmbeddingCollection,
        links: Links,
    ) -> None:
        self.tables, self.features_of, self.configs = tables, features_of, configs
        self.weighted, self.local, self.links = weighted, local, links
        self.dims = sorted({configs[t].dim for t in tables})
        self.tables_of = {d: [t for t in tables if configs[t].dim == d] for d in self.dims}

    def __call__(
        self,
        kjt: KeyedJaggedTensor,
        lay: BatchLayout,
        pooled: dict[str, torch.Tensor],
        seqs: dict[str, JaggedTensor],
    ) -> None:
        """Pooled features into ``pooled`` ``{f: [B, D]}``, sequences into ``seqs``."""
        values = kjt.values()
        # 1. per table: unique ids, counts, and each id's index into them
        uniq, inverse, counts = {}, {}, {}
        for t in self.tables:
            ids = torch.cat([lay.ids(values, f) for f in self.features_of[t]])
            uniq[t], inverse[t], counts[t] = torch.unique(
                ids.to(torch.int64), return_inverse=True, return_counts=True
            )
        if self.links.world == 1:  # this process owns every id: no exchange, no reordering
            emb = self.local.embed_ids(uniq, counts)
            vectors = {d: torch.cat([emb[t] for t in self.tables_of[d]]) for d in self.dims}
        else:
            vectors = self.exchange(uniq, counts)
        for d in self.dims:
            tabs = self.tables_of[d]
            first = dict(zip(tabs, [0, *np.cumsum([uniq[t].numel() for t in tabs]).tolist()]))
            self.pool(vectors[d], tabs, inverse, first, kjt, lay, pooled, seqs)

    def exchange(
        self, uniq: dict[str, torch.Tensor], counts: dict[str, torch.Tensor]
    ) -> dict[int, torch.Tensor]:
        """Steps 2-4 over ranks: each table's unique ids (and counts) to their owners, the
        owners' vectors back; ``{dim: [U, D]}``, the unique ids of that dim's tables in
        table order, each table's in the order of ``uniq[t]``."""
        w, links = self.links.world, self.links
        # 2. to the owners: sorted by (owner, table), table order dim-major
        route = SplitRoute.of([uniq[t] for t in self.tables], [counts[t] for t in self.tables], w)
        recv = links.counts(route.send)
        got = links.exchange(route.payload, route.send_sizes(), recv.sum(1).tolist())
        # 3. owner side: received (source, table) blocks regrouped table-major, looked up
        owner = route.received(recv, got)
        emb = self.local.embed_ids(
            dict(zip(self.tables, owner.ids)), dict(zip(self.tables, owner.counts))
        )
        out: dict[int, torch.Tensor] = {}
        t0 = 0
        for d in self.dims:
            # 4. vectors of this dim back to their requesters, in the order they came
            tabs = self.tables_of[d]
            t1 = t0 + len(tabs)
            rows, back = owner.reply(t0, t1)
            block = torch.cat([emb[t] for t in tabs])
            vecs = links.exchange(
                permute_rows(block, rows, inverse_permutation(rows)),
                back,
                route.send_sizes(t0, t1),
                scale=1.0 / w,
            )
            # rows came back in send order: put them in the order of the unique ids
            slot = route.slots(t0, t1)
            out[d] = permute_rows(vecs, inverse_permutation(slot), slot)
            t0 = t1
        return out

    def pool(
        self,
        vectors: torch.Tensor,
        tables: list[str],
        inverse: dict[str, torch.Tensor],
        first: dict[str, int],
        kjt: KeyedJaggedTensor,
        lay: BatchLayout,
        pooled: dict[str, torch.Tensor],
        seqs: dict[str, JaggedTensor],
    ) -> None:
        """Pool the features of ``tables`` (one dim) from ``vectors`` ``[U, D]``, the unique
        ids of those tables in order (table ``t``'s from row ``first[t]``; ``inverse[t]``:
        each id's index among them): one ``embedding_bag`` for all their pooled features,
        into ``pooled`` ``{f: [B, D]}``; sequence features into ``seqs``."""
        names, idx, lens, psw = [], [], [], []
        weighted = False
        weights = kjt.weights_or_none()
        for t in tables:
            o = 0
            for f in self.features_of[t]:
                n = lay.count(f)
                i = inverse[t][o : o + n] + first[t]
                o += n
                ln = lay.lengths(kjt.lengths(), f)
                if self.configs[t].pooling == "none":
                    seqs[f] = JaggedTensor(values=vectors[i], lengths=ln)
                    continue
                w = self.bag_weights(t, f, ln, lay, weights)
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
        pooled.update(zip(names, out.view(len(names), lay.b, -1)))

    def bag_weights(
        self,
        table: str,
        feature: str,
        lengths: torch.Tensor,
        lay: BatchLayout,
        weights: torch.Tensor | None,
    ) -> torch.Tensor | None:
        """Per-id weights of ``feature``'s bags: its weights, times ``1 / length`` for mean
        pooling; None: all ones."""
        w = None
        if self.weighted[feature] and weights is not None:
            w = lay.ids(weights, feature).float()
        if self.configs[table].pooling == "mean":
            off = torch.zeros(lay.b + 1, dtype=torch.int64, device=lengths.device)
            torch.cumsum(lengths, 0, out=off[1:])
            w = mean_weights(off, w)
        return w
