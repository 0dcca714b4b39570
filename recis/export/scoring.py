"""What every kind of loaded version shares when it scores rows: the task outputs of a
logit matrix, ``score_rows`` on the version's own conversion and forward, and the merge of
several requests' converted rows into one batch (request batching)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recis.io import Batch


def task_outputs(tasks: list[dict[str, str]], logits: torch.Tensor) -> dict[str, np.ndarray]:
    """``{task: [B]}`` from ``logits [B, T]`` (column ``i``: task ``i``): the probability for
    BCE tasks, the raw output otherwise."""
    out = {}
    for i, t in enumerate(tasks):
        x = logits[:, i]
        out[t["name"]] = (torch.sigmoid(x) if t["loss"] == "bce" else x).numpy()
    return out


B = TypeVar("B")  # a version's converted rows (what its rows_batch returns)


class RowScoring(ABC, Generic[B]):
    """``score_rows`` of every kind of loaded version, on its ``rows_batch`` and
    ``score_batch``."""

    tasks: list[dict[str, str]]

    @abstractmethod
    def rows_batch(self, rows: list[dict[str, Any]]) -> B:
        """JSON rows (at least one) validated and converted as training data is; DataError
        names the bad column and row."""

    @abstractmethod
    def score_batch(self, batch: B) -> dict[str, np.ndarray]:
        """``{task: [B]}``."""

    @abstractmethod
    def merge(self, batches: list[B]) -> B:
        """One batch of the rows of several ``rows_batch`` results (request batching)."""

    def score_rows(self, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        """Scores of JSON rows in the training schema; DataError names the bad column/row."""
        if not rows:
            return {t["name"]: np.empty(0, np.float32) for t in self.tasks}
        return self.score_batch(self.rows_batch(rows))


class QueryTopK(ABC):
    """``/topk`` of a version on its converted query rows: ``query_batch`` (validation and
    conversion, per request) and ``topk_batch`` (the search), so that the server can search
    several requests' rows in one call (:class:`recis.serve.batching.MicroBatcher`)."""

    @abstractmethod
    def query_batch(self, rows: list[dict[str, Any]]) -> Batch:
        """Query rows (at least one) validated and converted; DataError names the column."""

    @abstractmethod
    def topk_batch(
        self, batch: Batch, k: int, exclude: list[list[int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(ids [B, k], scores [B, k])`` best first; ``exclude[b]``: ids not to return for
        row ``b``; fewer than ``k`` results are padded with id -1 and score -inf."""

    def topk_rows(
        self, rows: list[dict[str, Any]], k: int, exclude: list[list[int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`topk_batch` of JSON query rows."""
        if not rows:
            return np.empty((0, k), np.int64), np.empty((0, k), np.float32)
        return self.topk_batch(self.query_batch(rows), k, exclude)


class SchemaScoring(RowScoring[Batch]):
    """A version whose rows go through recis.io's conversion into a :class:`Batch`."""

    def merge(self, batches: list[Batch]) -> Batch:
        return concat_batches(batches)


def concat_batches(batches: list[Batch]) -> Batch:
    """One Batch of ``sum B_i`` rows (ids, dense values and token ids; no labels)."""
    if len(batches) == 1:
        return batches[0]
    dicts = [b.sparse.to_dict() for b in batches]
    keys = batches[0].sparse.keys()
    rows = sum(b.batch_size for b in batches)
    empty = torch.zeros(0, dtype=torch.int64)
    values = torch.cat([empty, *(d[k].values() for k in keys for d in dicts)])
    lengths = torch.cat([empty, *(d[k].lengths() for k in keys for d in dicts)])
    kjt = KeyedJaggedTensor(keys=keys, values=values, lengths=lengths, stride=rows)
    # token ids are padded to the text feature's max_length: same width in every request
    text = {k: torch.cat([b.text[k] for b in batches]) for k in batches[0].text}
    return Batch(sparse=kjt, dense=torch.cat([b.dense for b in batches]), labels={}, text=text)
