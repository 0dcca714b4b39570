"""Evaluation: predictions over a data set, then per-task metrics, global across ranks.

GAUC grouping: a task's ``group_column`` is read from ``batch.extras[column]``
(``[B]`` ids, e.g. ``user_id``); when the batch has no such extra, a sparse
feature of that name with one id per row is used instead.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from recis import metrics
from recis.config import TaskConfig
from recis.errors import ConfigError
from recis.io.batch import Batch


def group_ids(batch: Batch, column: str) -> torch.Tensor:
    """The ``[B]`` group ids of ``column`` (extras first, then a one-id sparse feature)."""
    if column in batch.extras:
        return batch.extras[column].reshape(-1)
    if column in batch.sparse.keys():
        jt = batch.sparse[column]
        if not bool((jt.lengths() == 1).all()):
            raise ConfigError(
                f"train.tasks.group_column: sparse feature {column!r} must have one id per row"
            )
        return jt.values()
    raise ConfigError(
        f"train.tasks.group_column: {column!r} is neither in batch.extras nor a sparse feature"
    )


@torch.no_grad()
def predict(
    model: nn.Module,
    data: Iterable[Batch],
    tasks: list[TaskConfig],
    device: torch.device,
    max_batches: int | None = None,
    autocast: bool = False,
) -> dict[str, dict[str, np.ndarray]]:
    """``{task: {"pred", "label"[, "group"]}}`` over ``data`` on this rank.

    ``pred`` is the probability for BCE tasks and the raw output for MSE tasks.
    """
    model.eval()
    out: dict[str, dict[str, list[np.ndarray]]] = {t.name: {} for t in tasks}
    batches = data if max_batches is None else itertools.islice(data, max_batches)
    for batch in batches:
        batch = batch.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(batch)
        for t in tasks:
            logit = logits[t.name].float()
            pred = torch.sigmoid(logit) if t.loss == "bce" else logit
            d = out[t.name]
            d.setdefault("pred", []).append(metrics.torch_to_numpy(pred))
            d.setdefault("label", []).append(metrics.torch_to_numpy(batch.labels[t.name]))
            if t.group_column is not None:
                ids = group_ids(batch, t.group_column)
                d.setdefault("group", []).append(metrics.torch_to_numpy(ids))
    for t in tasks:  # a rank with no eval rows still joins the all-gather with empty arrays
        for key in ("pred", "label", *(("group",) if t.group_column else ())):
            out[t.name].setdefault(key, [])
    return {
        t: {k: np.concatenate(v) if v else np.empty(0) for k, v in d.items()}
        for t, d in out.items()
    }


def task_metrics(task: TaskConfig, arrays: dict[str, np.ndarray]) -> dict[str, float]:
    """Metrics of one task from global arrays: binary metrics for BCE, mse for MSE."""
    pred, label = arrays["pred"], arrays["label"]
    if task.loss == "mse":
        return {"mse": float(np.mean((pred - label) ** 2))}
    return metrics.binary_metrics(pred, label, arrays.get("group"))


def evaluate(
    model: nn.Module,
    data: Iterable[Batch],
    tasks: list[TaskConfig],
    device: torch.device,
    max_batches: int | None = None,
    autocast: bool = False,
) -> dict[str, float]:
    """``{"<task>/<metric>": value}``; identical on every rank (predictions are all-gathered)."""
    preds = predict(model, data, tasks, device, max_batches, autocast)
    result: dict[str, float] = {}
    for t in tasks:
        arrays = metrics.gather_arrays(preds[t.name])
        for k, v in task_metrics(t, arrays).items():
            result[f"{t.name}/{k}"] = v
    return result
