"""A published two-tower version loaded for serving: query rows -> top-K items, and
``(query, item)`` rows -> the model's score.

Rows go through recis.io's own conversion (:func:`recis.io.to_batch`) with the part of the
training schema the tower reads; each tower's ids through its exported tables, the rest
through its exported graph (:mod:`recis.export.towers`); top-K through the exported faiss
index over the corpus (:mod:`recis.export.index`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from recis.io import Batch

from .delta import Chain, load_part, version_chain
from .dense import load_graph
from .index import ItemSearch
from .manifest import manifest_schema, read_manifest
from .rows import request_batch
from .scoring import QueryTopK, SchemaScoring, task_outputs
from .tables import TableInfo
from .towers import INPUTS, OUTPUT, SIDES, TowerFrontend, side_schema, tower_part


class ServingTower:
    """One side of a two-tower version: its schema part, frontend and graph. ``chain``: the
    version and its delta bases (:func:`~recis.export.delta.version_chain`), the version
    last."""

    def __init__(self, chain: Chain, side: str) -> None:
        folder, manifest = chain[-1]
        spec = manifest["towers"][side]
        full = manifest_schema(folder, manifest)
        self.schema = side_schema(full, spec["features"])
        self.frontend = TowerFrontend(
            spec, _tables(chain, side, "tables"), _tables(chain, side, "sequence")
        )
        graph = spec["graph"]
        self.graph = load_graph(graph["format"], folder / graph["file"], INPUTS, OUTPUT)
        self.nan_policy: str = manifest["nan_policy"]

    def batch(self, rows: list[dict[str, Any]]) -> Batch:
        """JSON rows validated and converted as training data (DataError names the column)."""
        return request_batch(rows, self.schema, self.nan_policy)

    @torch.no_grad()
    def encode(self, batch: Batch) -> torch.Tensor:
        """``[B, D]`` unit-norm embeddings of converted rows."""
        return self.graph(*self.frontend.inputs(batch))


def _tables(chain: Chain, side: str, kind: str) -> tuple[dict[str, torch.Tensor], list[TableInfo]]:
    """``(tensors, infos)`` of one tables file of a tower (empty when it has none); a delta
    version's applied to its bases' (the same tables a full export has)."""
    part = tower_part(side, kind)
    return load_part(chain, part), part.locate(chain[-1][1])[1]


class RetrievalModel(SchemaScoring, QueryTopK):
    """One loaded two-tower version (``version_dir``; its files checked against the manifest).

    ``topk_rows`` answers query rows with item ids and scores ``<u, v>`` (best first);
    ``score_rows`` scores ``(query, item)`` rows as the trained model's forward does
    (``<u, v> / temperature``, the sigmoid for a BCE task)."""

    def __init__(self, version_dir: str | Path) -> None:
        self.path = Path(version_dir)
        self.version = self.path.name
        self.manifest = read_manifest(self.path)
        m = self.manifest
        self.tasks: list[dict[str, str]] = m["tasks"]
        self.temperature = float(m["temperature"])
        chain = version_chain(self.path, m)  # each delta base READY and verified
        self.towers = {side: ServingTower(chain, side) for side in SIDES}
        self.items = ItemSearch(self.path, m["index"])
        self.nan_policy: str = m["nan_policy"]
        # a (query, item) row for /score: both towers' columns
        features = [f for side in SIDES for f in m["towers"][side]["features"]]
        self.pair = side_schema(manifest_schema(self.path, m), features)

    def searchable(self) -> bool:
        """A two-tower version always has its item index."""
        return True

    def encode_queries(self, rows: list[dict[str, Any]]) -> torch.Tensor:
        """``[B, D]`` query embeddings of JSON rows (the query tower's columns)."""
        return self.towers["query"].encode(self.query_batch(rows))

    def query_batch(self, rows: list[dict[str, Any]]) -> Batch:
        """Query rows converted with the query tower's schema part."""
        return self.towers["query"].batch(rows)

    @torch.no_grad()
    def topk_batch(
        self, batch: Batch, k: int, exclude: list[list[int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(item ids [B, k], scores [B, k])``; ``exclude[b]``: ids not to return for row
        ``b`` (e.g. the user's seen items)."""
        return self.items.search(self.towers["query"].encode(batch), k, exclude)

    def rows_batch(self, rows: list[dict[str, Any]]) -> Batch:
        """``(query, item)`` rows converted with both towers' schema parts (one Batch)."""
        return request_batch(rows, self.pair, self.nan_policy)

    @torch.no_grad()
    def score_batch(self, batch: Batch) -> dict[str, np.ndarray]:
        """``{task: [B]}``: the two-tower forward's ``<u, v> / temperature`` per row."""
        u = self.towers["query"].encode(batch)
        v = self.towers["item"].encode(batch)
        logit = (u * v).sum(-1, keepdim=True) / self.temperature  # [B, 1]: one score, every task
        return task_outputs(self.tasks, logit.expand(-1, len(self.tasks)))
