"""Lookup of the tables kept whole on one rank (table-wise).

Each rank's bags of a whole table's features go to the table's rank
(:class:`WholeRoute`: the lengths and ids, and per-id weights, of the features of each
rank's tables), which looks them up for every rank at once (a fused pooled lookup over
``sum B`` bags in its local collection) and sends back each rank's pooled rows and
sequence vectors (:class:`WholeLookup`). A route can be built for the next batch ahead
of its lookup (:meth:`WholeLookup.prefetch`), so its ids travel while this step computes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from recis.embedding import HashedEmbeddingCollection

from .exchange import Links
from .router import BatchLayout

__all__ = ["WholeLayout", "WholeLookup", "WholeRoute"]


@dataclasses.dataclass(frozen=True)
class WholeLayout:
    """Per rank, the features of the whole tables it holds.

    Attributes:
        rank: this rank.
        feats_on: per rank, its features (in the source's feature order).
        pooled_on, seq_on: per rank, its pooled / sequence features with their dims.
        weighted_on: per rank, whether any of its features has per-id weights.
        weighted: per feature, whether it has per-id weights.
        whole_pooled: pooled features of whole tables, in output order.
    """

    rank: int
    feats_on: list[list[str]]
    pooled_on: list[list[tuple[str, int]]]
    seq_on: list[list[tuple[str, int]]]
    weighted_on: list[bool]
    weighted: dict[str, bool]
    whole_pooled: list[tuple[str, int]]

    @property
    def world(self) -> int:
        return len(self.feats_on)

    @property
    def pooled_width(self) -> list[int]:
        """Per rank, the width of its pooled block (sum of its pooled features' dims)."""
        return [sum(d for _, d in p) for p in self.pooled_on]

    def seq_cols(self, r: int) -> list[tuple[int, tuple[str, int]]]:
        """Rank ``r``'s sequence features with their index among its features."""
        return [(self.feats_on[r].index(f), (f, d)) for f, d in self.seq_on[r]]

    def column_runs(self, offsets: list[int]) -> list[tuple[int, int, int, int, int]]:
        """Copies from the receive buffer (rank ``r``'s block at ``offsets[r]``) into the
        ``[B, sum of D]`` pooled output: ``(block offset, block width, block column,
        output column, width)``, adjacent features merged."""
        starts = np.cumsum([0, *(d for _, d in self.whole_pooled)]).tolist()
        out_col = dict(zip((f for f, _ in self.whole_pooled), starts))
        runs: list[list[int]] = []
        for r, width in enumerate(self.pooled_width):
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
        return [(a, b, c, d, e) for a, b, c, d, e in runs]


class _Columns(torch.autograd.Function):
    """The pooled ``[B, width]`` output assembled from blocks of the exchange's receive
    buffer ``flat`` (one ``[B, w_r]`` block per rank): one copy forward, one copy back
    (views, splits and a cat would copy twice). ``runs``: ``(block offset, block width,
    block column, output column, columns)``."""

    @staticmethod
    def forward(
        ctx: Any, flat: torch.Tensor, b: int, runs: list[tuple[int, ...]], width: int
    ) -> torch.Tensor:
        ctx.b, ctx.runs, ctx.size = b, runs, flat.numel()
        out = flat.new_empty((b, width))
        for off, w, c, o, n in runs:
            out[:, o : o + n] = flat[off : off + b * w].view(b, w)[:, c : c + n]
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        b = ctx.b
        covered = sum(b * n for *_, n in ctx.runs)
        # sequence parts of the buffer (not read here) get zeros
        flat = grad.new_zeros(ctx.size) if covered < ctx.size else grad.new_empty(ctx.size)
        for off, w, c, o, n in ctx.runs:
            flat[off : off + b * w].view(b, w)[:, c : c + n] = grad[:, o : o + n]
        return flat, None, None, None


class WholeRoute:
    """The input half of the whole tables' exchange for one batch: to each rank, the
    lengths and the ids (and per-id weights) of the features of the tables it holds.

    Two transfers: the sizes, then the ids once the sizes are in (:meth:`send`). On an
    exchange that runs in the background (the process group) both do (the sizes start
    here), so a route built for the next batch travels while this step computes; on a
    blocking one (shared memory) both run in :meth:`send`, which the lookup before calls
    right after its blocking exchange. :meth:`wait` finishes them and gives what this rank
    received.
    """

    def __init__(
        self, kjt: KeyedJaggedTensor, lay: BatchLayout, whole: WholeLayout, links: Links
    ) -> None:
        self.kjt, self.lay, self.whole, self.links = kjt, lay, whole, links
        values, lengths = kjt.values().to(torch.int64), kjt.lengths().to(torch.int64)
        self.lengths = lengths
        self.sent = sent = [sum(lay.count(f) for f in fs) for fs in whole.feats_on]
        # to each rank, in one buffer: the lengths, then the ids, of the features of its
        # tables (one transfer, not two: at every collective a rank waits for the slower)
        self._ints: torch.Tensor | None = torch.cat(
            [
                x
                for fs in whole.feats_on
                for x in [lay.lengths(lengths, f) for f in fs] + [lay.ids(values, f) for f in fs]
            ]
        )
        self._floats = self._weights_to_send(kjt, lay, values.device)
        # Through shared memory, sizes and ids both go in send(): right after the blocking
        # exchange of the lookup before (the ranks are together there), in about 0.1 ms
        # (12 alternating 2-process runs: median 70,700 samples/s against 66,800 with them
        # in the background on gloo). On the process group, the sizes start now and the
        # ids in send(), in the background.
        self._size_table = torch.tensor([[lay.b, n] for n in sent], dtype=torch.int64)
        self._sizes: Callable[[], torch.Tensor] | None = None
        if links.rows.background:
            self._sizes = self._start(self._size_table, [1] * whole.world, [1] * whole.world)
        self._ids: Callable[[], torch.Tensor] | None = None
        self._weights: Callable[[], torch.Tensor] | None = None

    def _weights_to_send(
        self, kjt: KeyedJaggedTensor, lay: BatchLayout, device: torch.device
    ) -> torch.Tensor | None:
        """Per-id weights for the ranks holding a weighted table (ones for the unweighted
        features there); None when no rank holds one."""
        whole, weights = self.whole, kjt.weights_or_none()
        if not any(whole.weighted_on):
            return None
        # every rank takes part, also one holding none weighted
        floats = [
            lay.ids(weights, f).float()
            if whole.weighted[f] and weights is not None
            else torch.ones(lay.count(f), device=device)
            for r in range(whole.world)
            if whole.weighted_on[r]
            for f in whole.feats_on[r]
        ]
        return torch.cat(floats) if floats else torch.zeros(0, device=device)

    def _start(
        self, x: torch.Tensor, send: list[int], recv: list[int]
    ) -> Callable[[], torch.Tensor]:
        return self.links.rows.start(x, send, recv)

    def send(self) -> None:
        """Start sending the ids, once the sizes are in (again: nothing)."""
        if self._ids is not None:
            return
        whole, w, me = self.whole, self.whole.world, self.whole.rank
        if self._sizes is None:  # a blocking exchange: the sizes go now
            self._sizes = self._start(self._size_table, [1] * w, [1] * w)
        sizes = self._sizes()
        self.bs, self.ns = sizes[:, 0].tolist(), sizes[:, 1].tolist()  # per source rank
        nf = len(whole.feats_on[me])
        assert self._ints is not None
        self._ids = self._start(
            self._ints,
            [len(fs) * self.lay.b + n for fs, n in zip(whole.feats_on, self.sent)],
            [nf * bn + n for bn, n in zip(self.bs, self.ns)],
        )
        if self._floats is not None:
            self._weights = self._start(
                self._floats,
                [self.sent[r] if whole.weighted_on[r] else 0 for r in range(w)],
                self.ns if whole.weighted_on[me] else [0] * w,
            )
        self._ints = self._floats = None

    def wait(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What this rank received: every source rank's lengths and ids, one block per
        source, and their weights if this rank holds a weighted table."""
        self.send()
        assert self._ids is not None
        got = self._ids()
        weights = self._weights() if self._weights is not None else None
        return got, weights if self.whole.weighted_on[self.whole.rank] else None


class WholeLookup:
    """The lookup of the tables kept whole, on one rank, with the routes sent ahead.

    Args:
        layout: per rank, the features of its whole tables.
        local: the whole tables this rank holds (None: none).
        links: the transports.
        device: where outputs go.
    """

    def __init__(
        self,
        layout: WholeLayout,
        local: HashedEmbeddingCollection | None,
        links: Links,
        device: torch.device,
    ) -> None:
        self.layout, self.local, self.links, self.device = layout, local, links, device
        self.ahead: list[WholeRoute] = []  # routes of batches to come (prefetch)
        self.prefetched_lookups = 0  # lookups that found their ids sent ahead

    def prefetch(self, kjt: KeyedJaggedTensor) -> bool:
        """Start sending ``kjt``'s ids ahead of its lookup (False, nothing sent: ``kjt``
        lacks a feature of the whole tables); at most two batches stay ahead, an older one
        is finished and dropped."""
        keys = set(kjt.keys())
        if any(f not in keys for fs in self.layout.feats_on for f in fs):
            return False
        self.ahead.append(WholeRoute(kjt, BatchLayout.of(kjt), self.layout, self.links))
        self._drop_ahead(len(self.ahead) - 2)
        return True

    def send_ahead(self) -> None:
        """Send the ids of the batches ahead (their sizes are in by now)."""
        for route in self.ahead:
            route.send()

    def _drop_ahead(self, n: int) -> None:
        """Finish and drop the ``n`` oldest routes sent ahead (their transfers ran on every
        rank: finished, not abandoned)."""
        for route in self.ahead[: max(n, 0)]:
            route.wait()
        del self.ahead[: max(n, 0)]

    def route_of(self, kjt: KeyedJaggedTensor, lay: BatchLayout) -> WholeRoute:
        """The route sent ahead for ``kjt`` if there is one (a batch a later one overtook
        is dropped), else one started now."""
        for i, route in enumerate(self.ahead):
            if route.kjt is kjt:
                self._drop_ahead(i)
                self.prefetched_lookups += 1
                return self.ahead.pop(0)
        return WholeRoute(kjt, lay, self.layout, self.links)

    def __call__(self, route: WholeRoute, seqs: dict[str, JaggedTensor]) -> torch.Tensor | None:
        """Every rank's bags to the table's rank (``route``), looked up there, each rank's
        pooled rows and sequence vectors back. Returns the pooled features of whole tables
        as one ``[B, sum of D]`` tensor in output order (None if none); puts sequences
        into ``seqs``."""
        lay, whole = route.lay, self.layout
        got, wgot = route.wait()
        if whole.feats_on[whole.rank]:
            back, back_sizes = self._owner_lookup(route, got, wgot)
        else:  # nothing held here; an empty part keeps every rank in backward's exchange
            back = torch.zeros(0, device=self.device, requires_grad=torch.is_grad_enabled())
            back_sizes = [0] * whole.world
        pw = whole.pooled_width
        recv = [
            lay.b * pw[r] + sum(lay.count(f) * d for f, d in whole.seq_on[r])
            for r in range(whole.world)
        ]
        vecs = self.links.exchange(back, back_sizes, recv, scale=1.0 / whole.world)
        # sequences: views of each rank's block; pooled: one copy into output order
        for r, blk in enumerate(vecs.split(recv)):
            sizes = [lay.b * pw[r], *(lay.count(f) * d for f, d in whole.seq_on[r])]
            for (f, d), part in zip(whole.seq_on[r], blk.split(sizes)[1:]):
                seqs[f] = JaggedTensor(
                    values=part.view(-1, d), lengths=lay.lengths(route.lengths, f)
                )
        if not whole.whole_pooled:
            return None
        runs = whole.column_runs(np.cumsum([0, *recv]).tolist())
        width = sum(d for _, d in whole.whole_pooled)
        out: torch.Tensor = _Columns.apply(vecs, lay.b, runs, width)
        return out

    def _owner_lookup(
        self, route: WholeRoute, got: torch.Tensor, wgot: torch.Tensor | None
    ) -> tuple[torch.Tensor, list[int]]:
        """Owner side: one KJT of every source's bags, feature-major, looked up at once;
        gives what goes back to each source (its pooled rows, then its ids' vectors per
        sequence feature) and how much to each."""
        whole, w, me = self.layout, self.layout.world, self.layout.rank
        feats = whole.feats_on[me]
        nf, bs, ns = len(feats), route.bs, route.ns
        assert self.local is not None
        blocks = got.split([nf * bn + n for bn, n in zip(bs, ns)])
        lens = [x[: nf * bn].view(nf, bn) for x, bn in zip(blocks, bs)]
        per = [ln.sum(1).tolist() for ln in lens]  # [source][feature] id counts
        vals = [x[nf * bn :].split(per[s]) for s, (x, bn) in enumerate(zip(blocks, bs))]
        wts = None if wgot is None else [x.split(per[s]) for s, x in enumerate(wgot.split(ns))]
        order = [(s, i) for i in range(nf) for s in range(w)]
        local = KeyedJaggedTensor(
            keys=feats,
            values=torch.cat([vals[s][i] for s, i in order]),
            lengths=torch.cat(lens, dim=1).reshape(-1),
            weights=None if wts is None else torch.cat([wts[s][i] for s, i in order]),
            stride=sum(bs),
        )
        kt, sq = self.local.lookup(local)
        pdim = whole.pooled_width[me]
        flat = kt.values().reshape(-1) if kt is not None else None
        if not whole.seq_on[me] and flat is not None:
            back = flat  # rows of one source are contiguous: no copy
        else:
            col = {f: i for i, (f, _) in whole.seq_cols(me)}
            rows = [] if flat is None else list(flat.split([n * pdim for n in bs]))
            vec = {f: sq[f].values().split([p[col[f]] for p in per]) for f in col}
            back = torch.cat(
                [
                    x.reshape(-1)
                    for s in range(w)
                    for x in ([rows[s]] if rows else []) + [vec[f][s] for f in col]
                ]
            )
        back_sizes = [
            bs[s] * pdim + sum(per[s][c] * d for c, (_, d) in whole.seq_cols(me)) for s in range(w)
        ]
        return back, back_sizes
