"""The item index inside the training step: top-K per query from the whole item pool.

* :class:`ExactIndex` - exact inner-product search by a chunked matrix product and
  ``torch.topk`` (:func:`recis.models.two_tower.exact_topk`). The fast path on CPU up to
  about a million items (issue 19 measured it 2.5-3x faster than a faiss flat index at 1e5
  items, dim 64); memory is ``Q x (K + chunk)`` scores.
* :class:`IVFIndex` - faiss ``IndexIVFFlat`` (inner product) for bigger pools: approximate,
  ``nprobe`` of ``nlist`` lists scanned. faiss' OpenMP thread count is set explicitly
  (``threads``): its default, every core, was measured to slow the rest of the training step
  several-fold (issue 19).
* :class:`RefreshingIndex` - rebuilds either index from the current item tower every
  ``refresh_every`` steps. **Staleness**: between refreshes the index holds item vectors up
  to ``refresh_every - 1`` optimizer steps old, so the retrieved set is the top-K of a slightly
  older model; the policy's scores are always recomputed with the current towers (only the
  *choice* of the K candidates is stale). ``refresh_every=1`` is exact on-policy retrieval.
* :func:`merge_topk` / :func:`sharded_search` - each rank holds a shard of the pool and
  searches it; the per-shard top-K lists are merged into the global top-K.

Shapes: ``Q`` queries, ``N`` pool items, ``D`` dim, ``K`` retrieved per query, ``S`` shards.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist

from recis.errors import ConfigError
from recis.models.two_tower import exact_topk


class ItemIndex(ABC):
    """A searchable snapshot of the item vectors ``[N, D]``."""

    @abstractmethod
    def build(self, items: torch.Tensor) -> None:
        """(Re)index ``items [N, D]`` (row ``j`` is pool item ``j``)."""

    @abstractmethod
    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``queries [Q, D]`` -> (scores ``[Q, K]``, pool rows ``[Q, K]``), best first."""


class ExactIndex(ItemIndex):
    """Exact top-K by chunked matmul (``chunk`` pool rows at a time)."""

    def __init__(self, chunk: int = 65536) -> None:
        if chunk <= 0:
            raise ConfigError(f"index.chunk: must be positive, got {chunk}")
        self.chunk = chunk
        self.items: torch.Tensor | None = None

    def build(self, items: torch.Tensor) -> None:
        self.items = items.detach().contiguous()

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.items is None:
            raise RuntimeError("ExactIndex.search before build")
        return exact_topk(queries.detach(), self.items, k, self.chunk)


class IVFIndex(ItemIndex):
    """faiss IVF-Flat over inner products (approximate: ``nprobe`` of ``nlist`` lists).

    ``nlist`` is capped at ``N // 39`` (faiss wants ~39 training points per centroid).
    """

    def __init__(self, nlist: int = 1024, nprobe: int = 16, threads: int = 1) -> None:
        import faiss  # the index extra (requirements/extra-index.txt)

        if nlist <= 0 or nprobe <= 0 or threads <= 0:
            raise ConfigError(
                f"index: nlist, nprobe and threads must be positive, got {nlist}, {nprobe}, "
                f"{threads}"
            )
        self._faiss = faiss
        faiss.omp_set_num_threads(threads)
        self.nlist, self.nprobe = nlist, nprobe
        self.index: object | None = None

    def build(self, items: torch.Tensor) -> None:
        faiss = self._faiss
        x = np.ascontiguousarray(items.detach().float().cpu().numpy())
        nlist = max(1, min(self.nlist, x.shape[0] // 39))
        quantizer = faiss.IndexFlatIP(x.shape[1])
        index = faiss.IndexIVFFlat(quantizer, x.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        index.add(x)
        index.nprobe = min(self.nprobe, nlist)
        self.index, self._quantizer = index, quantizer  # the quantizer must outlive the index

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.index is None:
            raise RuntimeError("IVFIndex.search before build")
        q = np.ascontiguousarray(queries.detach().float().cpu().numpy())
        scores, rows = self.index.search(q, k)  # type: ignore[attr-defined]  # faiss is untyped
        dev = queries.device
        return torch.from_numpy(scores).to(dev), torch.from_numpy(rows).long().to(dev)


def make_index(
    kind: str, chunk: int = 65536, nlist: int = 1024, nprobe: int = 16, threads: int = 1
) -> ItemIndex:
    """``kind``: ``exact`` or ``ivf``."""
    if kind == "exact":
        return ExactIndex(chunk)
    if kind == "ivf":
        return IVFIndex(nlist, nprobe, threads)
    raise ConfigError(f"index.kind: expected 'exact' or 'ivf', got {kind!r}")


class RefreshingIndex:
    """An index rebuilt from ``encode_pool()`` every ``refresh_every`` calls of :meth:`search`.

    ``encode_pool`` returns the current item vectors ``[N, D]`` (no gradient needed).
    """

    def __init__(
        self, index: ItemIndex, encode_pool: Callable[[], torch.Tensor], refresh_every: int
    ) -> None:
        if refresh_every <= 0:
            raise ConfigError(f"index.refresh_every: must be positive, got {refresh_every}")
        self.index, self.encode_pool, self.refresh_every = index, encode_pool, refresh_every
        self.calls = 0
        self.refreshes = 0

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.calls % self.refresh_every == 0:
            with torch.no_grad():
                self.index.build(self.encode_pool())
            self.refreshes += 1
        self.calls += 1
        return self.index.search(queries, k)


def merge_topk(
    scores: list[torch.Tensor], rows: list[torch.Tensor], offsets: list[int], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge per-shard top-K lists into the global top-K.

    ``scores[s], rows[s] [Q, K_s]`` shard ``s``'s results with rows local to the shard,
    ``offsets[s]`` the global row of the shard's first item. Returns global
    (scores, rows) ``[Q, min(k, sum K_s)]``, best first.
    """
    s = torch.cat(scores, dim=1)
    r = torch.cat([rw + off for rw, off in zip(rows, offsets)], dim=1)
    best, sel = s.topk(min(k, s.shape[1]), dim=1)
    return best, r.gather(1, sel)


def shard_bounds(n: int, world: int) -> list[int]:
    """``[S + 1]`` row boundaries splitting ``n`` pool items into ``world`` near-equal shards."""
    return [n * s // world for s in range(world + 1)]


def sharded_search(
    index: ItemIndex, queries: torch.Tensor, k: int, offset: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Search this rank's shard (global rows from ``offset``) and merge every rank's top-K.

    Every rank passes the same ``queries [Q, D]`` (e.g. all-gathered) and gets the global
    top-K. Without an initialised process group it is the local search.
    """
    s, r = index.search(queries, k)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return s, r + offset
    world = dist.get_world_size()
    all_s = [torch.empty_like(s) for _ in range(world)]
    all_r = [torch.empty_like(r) for _ in range(world)]
    dist.all_gather(all_s, s.contiguous())
    dist.all_gather(all_r, (r + offset).contiguous())
    return merge_topk(all_s, all_r, [0] * world, k)
