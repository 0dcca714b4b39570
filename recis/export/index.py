"""The item index of a two-tower export: every corpus item's embedding and a faiss index.

``items.safetensors`` holds ``ids`` int64 ``[N]`` (sorted) and ``embeddings`` fp32 ``[N, D]``
(row ``j`` is item ``ids[j]``); ``items.faiss`` a faiss index over the same rows, by inner
product (the towers' score): ``flat`` (``IndexFlatIP``, exact, the default) or ``ivf``
(``IndexIVFFlat`` with ``nlist`` lists, ``nprobe`` of them searched per query).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from recis.errors import ConfigError

KINDS = ("flat", "ivf")
ITEMS = "items.safetensors"
INDEX = "items.faiss"


def _faiss() -> Any:
    """The faiss module (the ``index`` extra: two-tower exports and their serving need it)."""
    try:
        import faiss
    except ImportError:
        raise ConfigError(
            "model.name: two_tower: exporting or serving its item index needs faiss "
            "(make install EXTRAS=index,serve)"
        ) from None
    return faiss


@dataclass
class IndexOptions:
    """``kind`` one of :data:`KINDS`; for ``ivf``: ``nlist`` lists (default ``sqrt(N)``),
    ``nprobe`` searched per query (default ``min(nlist, 8)``)."""

    kind: str = "flat"
    nlist: int | None = None
    nprobe: int | None = None


def build_faiss(emb: np.ndarray, options: IndexOptions) -> tuple[Any, dict[str, Any]]:
    """A faiss index over ``emb [N, D]`` fp32 and its manifest entry."""
    faiss = _faiss()

    if options.kind not in KINDS:
        raise ConfigError(f"--index: {options.kind!r} is not one of {', '.join(KINDS)}")
    n, d = emb.shape
    if options.kind == "flat":
        index = faiss.IndexFlatIP(d)
        index.add(emb)
        return index, {"kind": "flat", "items": n, "dim": d}
    nlist = options.nlist or max(1, int(math.sqrt(n)))
    if not 1 <= nlist <= n:
        raise ConfigError(f"--nlist: {nlist} must be in [1, {n}] (the corpus has {n} items)")
    nprobe = min(nlist, options.nprobe or 8)
    quantizer = faiss.IndexFlatIP(d)
    ivf = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.train(emb)
    ivf.add(emb)
    ivf.nprobe = nprobe
    return ivf, {"kind": "ivf", "items": n, "dim": d, "nlist": nlist, "nprobe": nprobe}


def save_index(folder: Path, ids: np.ndarray, emb: torch.Tensor, options: IndexOptions) -> dict:
    """Write ``items.safetensors`` and ``items.faiss`` into ``folder``; the manifest entry."""
    faiss = _faiss()

    vectors = np.ascontiguousarray(emb.float().numpy(), dtype=np.float32)
    index, entry = build_faiss(vectors, options)
    save_file(
        {"ids": torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)), "embeddings": emb},
        str(folder / ITEMS),
    )
    faiss.write_index(index, str(folder / INDEX))
    return {**entry, "file": INDEX, "items_file": ITEMS}


class ItemSearch:
    """A loaded item index: top-K items of query embeddings, optionally excluding some."""

    def __init__(self, folder: Path, entry: dict) -> None:
        faiss = _faiss()
        # as many search threads as torch's intra-op pool (recis serve --threads)
        faiss.omp_set_num_threads(torch.get_num_threads())

        items = load_file(str(folder / entry["items_file"]))
        self.ids = items["ids"].numpy()  # [N]
        self.embeddings = items["embeddings"]  # [N, D]
        self.index = faiss.read_index(str(folder / entry["file"]))
        if entry["kind"] == "ivf":
            faiss.extract_index_ivf(self.index).nprobe = int(entry["nprobe"])

    def search(
        self, queries: torch.Tensor, k: int, exclude: list[list[int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(ids [Q, k], scores [Q, k])`` best first; ``exclude[q]``: item ids not to return
        for query ``q``. Fewer than ``k`` results (corpus too small, or an IVF probe that
        reaches fewer items) are padded with id -1 and score -inf."""
        q = np.ascontiguousarray(queries.float().numpy(), dtype=np.float32)
        extra = max((len(e) for e in exclude), default=0) if exclude else 0
        want = min(k + extra, len(self.ids))
        out_ids = np.full((len(q), k), -1, dtype=np.int64)
        out_s = np.full((len(q), k), -np.inf, dtype=np.float32)
        if want == 0:
            return out_ids, out_s
        scores, rows = self.index.search(q, want)
        for i in range(len(q)):
            r = rows[i][rows[i] >= 0]
            got, s = self.ids[r], scores[i][: len(r)]
            if exclude and exclude[i]:
                keep = ~np.isin(got, np.asarray(exclude[i], dtype=np.int64))
                got, s = got[keep], s[keep]
            n = min(k, len(got))
            out_ids[i, :n], out_s[i, :n] = got[:n], s[:n]
        return out_ids, out_s
