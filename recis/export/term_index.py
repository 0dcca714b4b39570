"""DeepBoW's term-weight index: product bags for retrieval by the query's bag.

DeepBoW scores a pair by ``s = sum_t w_q(t) w_p(t)`` over the terms both sparse bags hold,
so products can be retrieved with an inverted index: ``products.safetensors`` holds every
corpus product's bag (``product_id [N]`` sorted, ``indptr [N + 1]``, ``terms [nnz]`` (ids
mod ``V``), ``weights [nnz]``: the layout of :meth:`recis.models.deepbow.DeepBoW.
encode_products`), and ``query_bag.pt2`` (``.ts`` / ``.onnx``) the query side's encoder,
``(ids [B, T], mask [B, T]) -> bag [B, V]`` (at most ``bag_size`` non-zeros per row). At
serving the bags form a sparse ``[N, V]`` matrix and top-K is by ``s`` (the raw bag score:
the calibrated relevance adds the dense features and the product prior when the model has
them, which an index by terms cannot see).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from recis.config import RunConfig
from recis.errors import ConfigError
from recis.io import Batch, make_reader
from recis.models.deepbow import DeepBoW
from recis.models.text_towers import text_input

from .dense import FILES, load_graph, save_graph

PRODUCTS = "products.safetensors"
INPUTS = ["ids", "mask"]
OUTPUT = "bag"


class BagGraph(nn.Module):
    """The query's bag: ``(ids [B, T], mask [B, T]) -> [B, V]`` (:meth:`DeepBoW.dense_bag`)."""

    def __init__(self, model: DeepBoW) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model.dense_bag(ids, mask)


@torch.no_grad()
def product_bags(model: DeepBoW, batches: Iterable[Batch]) -> dict[str, torch.Tensor]:
    """Each product's bag (its last row's, by ``product_id``), in the layout above."""
    cfg = model.config
    model.eval()
    ids, terms, weights = [], [], []
    for batch in batches:
        t, w = model.bag(*text_input(batch, cfg.product_text, cfg.max_len))  # [B, K]
        ids.append(batch.sparse[str(cfg.product_id)].values())
        terms.append(t)
        weights.append(w.float())
    if not ids:
        raise ConfigError("--items: the product corpus has no rows")
    pid, t, w = torch.cat(ids).numpy(), torch.cat(terms), torch.cat(weights)
    uniq, first_rev = np.unique(pid[::-1], return_index=True)
    last = torch.from_numpy(len(pid) - 1 - first_rev)
    t, w = t[last], w[last]
    keep = w > 0  # zero weights are empty slots of the bag
    indptr = torch.cat([torch.zeros(1, dtype=torch.int64), keep.sum(1).cumsum(0)])
    return {
        "product_id": torch.from_numpy(uniq.astype(np.int64)),
        "indptr": indptr,
        "terms": t[keep].to(torch.int64),
        "weights": w[keep].contiguous(),
    }


def write_term_index(
    folder: Path, model: DeepBoW, corpus: Iterable[Batch], fmt: str, width: int
) -> dict[str, Any]:
    """Write the product bags and the query bag graph (texts ``width`` tokens wide); the
    manifest's ``term_index`` entry."""
    bags = product_bags(model, corpus)
    save_file(bags, str(folder / PRODUCTS))
    graph = {"format": fmt, "file": f"query_bag.{FILES[fmt].split('.')[1]}"}
    example = {
        "ids": torch.zeros(2, width, dtype=torch.int64),
        "mask": torch.ones(2, width, dtype=torch.bool),
    }
    save_graph(BagGraph(model).eval(), fmt, folder / graph["file"], example, OUTPUT)
    n = len(bags["product_id"])
    return {"products_file": PRODUCTS, "products": n, "vocab": model.config.vocab, "graph": graph}


class ProductSearch:
    """The loaded term-weight index: top-K products of query texts by bag score."""

    def __init__(self, folder: Path, entry: dict[str, Any]) -> None:
        bags = load_file(str(folder / entry["products_file"]))
        self.ids = bags["product_id"].numpy()
        self.terms, self.weights = bags["terms"], bags["weights"]  # [nnz]
        # the product of each bag entry: the rows of the [N, V] bag matrix, as a segment id
        self.product_of = torch.repeat_interleave(
            torch.arange(len(self.ids)), bags["indptr"].diff()
        )  # [nnz]
        g = entry["graph"]
        self.bag = load_graph(g["format"], folder / g["file"], INPUTS, OUTPUT)

    @torch.no_grad()
    def search(
        self, ids: torch.Tensor, mask: torch.Tensor, k: int, exclude: list[list[int]] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(product ids [B, k], scores [B, k])`` best first for query token ids and masks
        ``[B, T]``; ``exclude[b]``: product ids not to return for row ``b``; fewer than
        ``k`` products: id -1, score -inf."""
        q = self.bag(ids, mask)  # [B, V]
        # s(q, p) = sum over p's bag entries of w_p(t) q(t): a segment sum per product
        scores = torch.zeros(len(q), len(self.ids)).index_add_(
            1, self.product_of, q[:, self.terms] * self.weights
        )  # [B, N]
        if exclude:
            for b, ex in enumerate(exclude):
                want = np.asarray(ex, dtype=np.int64)
                pos = np.searchsorted(self.ids, want).clip(max=len(self.ids) - 1)
                scores[b, torch.from_numpy(pos[self.ids[pos] == want])] = float("-inf")
        top = min(k, scores.shape[1])
        s, col = scores.topk(top, dim=1)
        out_ids = np.full((len(q), k), -1, dtype=np.int64)
        out_s = np.full((len(q), k), -np.inf, dtype=np.float32)
        found = self.ids[col.numpy()]
        found[~torch.isfinite(s).numpy()] = -1
        out_ids[:, :top], out_s[:, :top] = found, s.numpy()
        return out_ids, out_s


def product_reader(
    cfg: RunConfig, model: DeepBoW, items: str | None, batch_size: int = 2048
) -> Iterable[Batch] | None:
    """The product corpus's rows (the product text and id): ``items`` (``--items``, in
    ``data.format``), else the run's training data; None when the model has no
    ``product_id`` (no index: products cannot be named)."""
    pid = model.config.product_id
    schema = cfg.data.schema_
    if pid is None or pid not in {f.name for f in schema.sparse}:
        return None
    text = model.config.product_text
    part = dataclasses.replace(
        schema,
        dense=[],
        labels=[],
        extras=[],
        sparse=[f for f in schema.sparse if f.name in (pid, text)],
        text=[t for t in schema.text if t.name == text],
    )
    paths = items or cfg.data.train or str(Path(cfg.data.path) / "train")
    return make_reader(paths, part, batch_size=batch_size, format=cfg.data.format, prefetch=0)
