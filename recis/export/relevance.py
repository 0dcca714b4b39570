"""DeepBoW exported for serving: query and product texts -> relevance, as eval scores them.

DeepBoW has no hashed tables: both bag-of-words encoders (the shared text encoder, term
weighting, synonym expansion), the bag product and the calibration head are one graph,
:class:`RelevanceGraph` (``relevance.pt2`` / ``.ts`` / ``.onnx``), exported through
:meth:`recis.models.deepbow.DeepBoW.score_texts`. Requests carry the raw texts (tokenised by
recis.io with the run's tokenizer, bundled in the version: :mod:`recis.export.tokenizers`).

Shapes: ``B`` rows, ``T`` tokens (the model's ``max_len``, or the text feature's
``max_length`` when shorter: texts are padded to it; padding is masked), ``Dd`` dense
features, ``N`` tasks.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recis.errors import ConfigError
from recis.features import Schema
from recis.io import Batch
from recis.models.deepbow import DeepBoW
from recis.models.layers import text_or_list_ids

from .dense import FILES, load_graph, save_graph
from .manifest import manifest_schema, read_manifest
from .rows import request_batch
from .scoring import QueryTopK, SchemaScoring, task_outputs
from .term_index import ProductSearch

INPUTS = ["query_ids", "query_mask", "product_ids", "product_mask", "dense"]
OUTPUT = "logits"


class RelevanceGraph(nn.Module):
    """``(query_ids, query_mask, product_ids, product_mask [B, T], dense [B, Dd]) -> logits
    [B, N]``: the model's forward on its two texts."""

    def __init__(self, model: DeepBoW) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        query_ids: torch.Tensor,
        query_mask: torch.Tensor,
        product_ids: torch.Tensor,
        product_mask: torch.Tensor,
        dense: torch.Tensor,
    ) -> torch.Tensor:
        return self.model.score_texts((query_ids, query_mask), (product_ids, product_mask), dense)


def text_width(name: str, max_len: int, schema: Schema) -> int:
    """``T`` of one text input: ``max_len``, or a raw-text feature's ``max_length`` if less."""
    lengths = {t.name: t.max_length for t in schema.text}
    return min(max_len, lengths.get(name, max_len))


def write_relevance(folder: Path, model: DeepBoW, schema: Schema, fmt: str) -> dict[str, Any]:
    """Write the relevance graph into ``folder``; the manifest's ``relevance`` entry."""
    cfg = model.config
    spec: dict[str, Any] = {"query_text": cfg.query_text, "product_text": cfg.product_text}
    spec["widths"] = [
        text_width(n, cfg.max_len, schema) for n in (cfg.query_text, cfg.product_text)
    ]
    spec["dense_dim"] = schema.dense_dim
    spec["dense_inputs"] = cfg.dense_inputs
    spec["graph"] = {"format": fmt, "file": f"relevance.{FILES[fmt].split('.')[1]}"}
    tq, tp = spec["widths"]
    example = {
        "query_ids": torch.zeros(2, tq, dtype=torch.int64),
        "query_mask": torch.ones(2, tq, dtype=torch.bool),
        "product_ids": torch.zeros(2, tp, dtype=torch.int64),
        "product_mask": torch.ones(2, tp, dtype=torch.bool),
        "dense": torch.zeros(2, schema.dense_dim),
    }
    save_graph(RelevanceGraph(model).eval(), fmt, folder / spec["graph"]["file"], example, OUTPUT)
    return {"relevance": spec}


def request_schema(schema: Schema, spec: dict[str, Any]) -> Schema:
    """What a request row carries: the two texts and, when the model reads them, the dense
    features (no labels, no other sparse features or extras)."""
    texts = {spec["query_text"], spec["product_text"]}
    return dataclasses.replace(
        schema,
        labels=[],
        extras=[],
        dense=schema.dense if spec["dense_inputs"] else [],
        sparse=[f for f in schema.sparse if f.name in texts],
        text=[t for t in schema.text if t.name in texts],
    )


class RelevanceModel(SchemaScoring, QueryTopK):
    """One loaded DeepBoW version: rows with the query and product texts (and the dense
    features) -> ``{task: probability}``, as ``recis eval`` scores them."""

    def __init__(self, version_dir: str | Path) -> None:
        self.path = Path(version_dir)
        self.version = self.path.name
        self.manifest = read_manifest(self.path)
        m = self.manifest
        self.spec = m["relevance"]
        self.schema = request_schema(manifest_schema(self.path, m), self.spec)
        self.tasks: list[dict[str, str]] = m["tasks"]
        self.nan_policy: str = m["nan_policy"]
        graph = self.spec["graph"]
        self.graph = load_graph(graph["format"], self.path / graph["file"], INPUTS, OUTPUT)
        index = m.get("term_index")
        self.products = ProductSearch(self.path, index) if index else None
        # a /topk row: the query's text alone
        q = self.spec["query_text"]
        self.query_schema = dataclasses.replace(
            self.schema,
            dense=[],
            sparse=[f for f in self.schema.sparse if f.name == q],
            text=[t for t in self.schema.text if t.name == q],
        )

    def pair_columns(self) -> tuple[str, str, str]:
        """The query and product text columns and the first task (a model that also reads
        dense features cannot score a bare text pair: ConfigError)."""
        if self.spec["dense_inputs"]:
            raise ConfigError(f"{self.path}: the model reads dense features, not text pairs alone")
        return self.spec["query_text"], self.spec["product_text"], self.tasks[0]["name"]

    def searchable(self) -> bool:
        """Whether the version has a term-weight index of products (``/topk``)."""
        return self.products is not None

    def query_batch(self, rows: list[dict[str, Any]]) -> Batch:
        """Rows with the query text, converted with the query column's schema part."""
        return request_batch(rows, self.query_schema, self.nan_policy)

    def topk_batch(
        self, batch: Batch, k: int, exclude: list[list[int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(product ids [B, k], bag scores [B, k])`` for converted query rows."""
        if self.products is None:
            raise ConfigError(f"{self.path}: the version has no term-weight index")
        ids, mask = text_or_list_ids(batch, self.spec["query_text"], self.spec["widths"][0])
        return self.products.search(ids, mask, k, exclude)

    def rows_batch(self, rows: list[dict[str, Any]]) -> Batch:
        """JSON rows validated and converted as training data (DataError names the column)."""
        return request_batch(rows, self.schema, self.nan_policy)

    @torch.no_grad()
    def score_batch(self, batch: Batch) -> dict[str, np.ndarray]:
        """``{task: [B]}``: the probability for BCE tasks, the raw output otherwise."""
        s = self.spec
        q = text_or_list_ids(batch, s["query_text"], s["widths"][0])
        p = text_or_list_ids(batch, s["product_text"], s["widths"][1])
        dense = batch.dense.float() if s["dense_inputs"] else torch.zeros(len(q[0]), s["dense_dim"])
        return task_outputs(self.tasks, self.graph(*q, *p, dense))  # [B, N]
