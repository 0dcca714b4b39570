"""A published version loaded for scoring: rows in the training schema -> scores per task.

Rows go through recis.io's own validation and conversion (:func:`recis.io.to_batch`: the
same feature transforms, string hashing and null fills as training); the sparse ids through
the exported tables (:class:`~recis.export.tables.TableLookup`), the rest through the
exported dense graph.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import torch

from recis.io import Batch

from .dense import load_dense
from .exporter import load_tables, table_infos
from .manifest import manifest_schema, read_manifest
from .rows import request_batch, rows_table
from .scoring import SchemaScoring, task_outputs
from .tables import TableLookup


class ScoringVersion(Protocol):
    """What the server needs of a loaded version: scores of JSON rows. A version's converted
    rows (``rows_batch``; a :class:`Batch` for the schema-based kinds) are its own type:
    ``merge`` and ``score_batch`` take them back."""

    version: str
    manifest: dict[str, Any]
    tasks: list[dict[str, str]]

    def rows_batch(self, rows: list[dict[str, Any]]) -> Any: ...

    def merge(self, batches: list[Any]) -> Any: ...

    def score_batch(self, batch: Any) -> dict[str, np.ndarray]: ...

    def score_rows(self, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]: ...


@runtime_checkable
class PairScoring(Protocol):
    """A relevance version that scores (query text, item text) pairs: DeepBoW, a relevance
    LLM. ``pair_columns``: the request columns of the two texts and the score to read."""

    def pair_columns(self) -> tuple[str, str, str]: ...

    def score_rows(self, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]: ...


@runtime_checkable
class TopKVersion(Protocol):
    """A version that answers ``/topk``: item or product ids and scores for query rows
    (:class:`~recis.export.scoring.QueryTopK`: converted per request, searched together)."""

    version: str

    def searchable(self) -> bool: ...

    def query_batch(self, rows: list[dict[str, Any]]) -> Batch: ...

    def topk_batch(
        self, batch: Batch, k: int, exclude: list[list[int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def topk_rows(
        self, rows: list[dict[str, Any]], k: int, exclude: list[list[int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...


class ServingModel(SchemaScoring):
    """One loaded version (``version_dir``; its files checked against the manifest)."""

    def __init__(self, version_dir: str | Path) -> None:
        self.path = Path(version_dir)
        self.version = self.path.name
        self.manifest = read_manifest(self.path)
        m = self.manifest
        schema = manifest_schema(self.path, m)
        # requests carry no labels: the same schema without them
        self.schema = dataclasses.replace(schema, labels=[])
        self.tasks: list[dict[str, str]] = m["tasks"]
        self.nan_policy: str = m["nan_policy"]
        tensors = load_tables(self.path, m)
        self.tables = TableLookup(tensors, table_infos(m), m["sparse_features"])
        self.graph = load_dense(m["graph"]["format"], self.path / m["graph"]["file"])

    @property
    def columns(self) -> list[str]:
        """The input columns a request row may carry (the schema's, labels excluded)."""
        return self.schema.columns

    @torch.no_grad()
    def score_batch(self, batch: Batch) -> dict[str, np.ndarray]:
        """``{task: [B]}``: the probability for BCE tasks, the raw output otherwise."""
        pooled = self.tables.pooled(batch.sparse)  # [B, F, D]
        return task_outputs(self.tasks, self.graph(batch.dense.float(), pooled))  # [B, T]

    def table(self, rows: list[dict[str, Any]]) -> pa.Table:
        """JSON rows -> an Arrow table of the schema's columns (:func:`rows_table`)."""
        return rows_table(self.columns, rows)

    def rows_batch(self, rows: list[dict[str, Any]]) -> Batch:
        return request_batch(rows, self.schema, self.nan_policy)
