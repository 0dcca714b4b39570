"""What every kind of loaded version shares when it scores rows: the task outputs of a
logit matrix and ``score_rows`` on the version's own conversion and forward."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch

from recis.io import Batch


def task_outputs(tasks: list[dict[str, str]], logits: torch.Tensor) -> dict[str, np.ndarray]:
    """``{task: [B]}`` from ``logits [B, T]`` (column ``i``: task ``i``): the probability for
    BCE tasks, the raw output otherwise."""
    out = {}
    for i, t in enumerate(tasks):
        x = logits[:, i]
        out[t["name"]] = (torch.sigmoid(x) if t["loss"] == "bce" else x).numpy()
    return out


class RowScoring(ABC):
    """``score_rows`` of every kind of loaded version, on its ``rows_batch`` and
    ``score_batch``."""

    tasks: list[dict[str, str]]

    @abstractmethod
    def rows_batch(self, rows: list[dict[str, Any]]) -> Batch:
        """JSON rows (at least one) validated and converted as training data is; DataError
        names the bad column and row."""

    @abstractmethod
    def score_batch(self, batch: Batch) -> dict[str, np.ndarray]:
        """``{task: [B]}``."""

    def score_rows(self, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        """Scores of JSON rows in the training schema; DataError names the bad column/row."""
        if not rows:
            return {t["name"]: np.empty(0, np.float32) for t in self.tasks}
        return self.score_batch(self.rows_batch(rows))
