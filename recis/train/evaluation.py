"""Evaluation: predictions over a data set, then per-task metrics, global across ranks.

GAUC grouping: a task's ``group_column`` is read from ``batch.extras[column]``
(``[B]`` ids, e.g. ``user_id``); when the batch has no such extra, a sparse
feature of that name with one id per row is used instead.

Retrieval: a model that is a :class:`CorpusRetrievalModel` (the two-tower with
``retrieval_eval`` configured) is also scored by ranking its whole item corpus for every
eval row, the user's seen items excluded (:func:`retrieval_metrics`): ``retrieval/hr@K``,
``recall@K``, ``ndcg@K``, ``mrr@K``. A metric that does not apply is ``None``
(see :mod:`recis.metrics`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from recis import metrics
from recis.config import TaskConfig
from recis.errors import ConfigError
from recis.io.batch import Batch
from recis.metrics import RetrievalCorpus

from .model_api import unwrapped


@runtime_checkable
class CorpusRetrievalModel(Protocol):
    """A model evaluated by ranking a whole item corpus for each eval row (a query)."""

    def retrieval_corpus(self) -> RetrievalCorpus | None:
        """The encoded corpus and seen items; None when retrieval eval is not configured."""
        ...

    def encode_queries(self, batch: Batch) -> torch.Tensor:
        """``[B, D]`` query vectors of the eval rows."""
        ...

    def item_ids(self, batch: Batch) -> torch.Tensor:
        """``[B]`` each eval row's relevant (held-out) item id."""
        ...

    def user_keys(self, batch: Batch) -> torch.Tensor:
        """``[B]`` each eval row's user key (whose seen items are excluded)."""
        ...


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


def task_metrics(task: TaskConfig, arrays: dict[str, np.ndarray]) -> dict[str, float | None]:
    """Metrics of one task from global arrays: binary metrics for BCE, mse for MSE."""
    pred, label = arrays["pred"], arrays["label"]
    if task.loss == "mse":
        return {"mse": float(np.mean((pred - label) ** 2))}
    return metrics.binary_metrics(pred, label, arrays.get("group"))


@torch.no_grad()
def retrieval_metrics(
    model: CorpusRetrievalModel,
    data: Iterable[Batch],
    device: torch.device,
    max_batches: int | None = None,
) -> dict[str, float | None]:
    """``{"retrieval/<metric>@K": mean}`` of ranking the model's whole corpus for each row.

    Each eval row is a query: its user's seen items are excluded, its item is the one
    relevant item. Per-query values are all-gathered, so every rank gets the global mean.
    """
    corpus = model.retrieval_corpus()
    if corpus is None:
        return {}
    items = corpus.embeddings.to(device)
    per_query: dict[str, list[np.ndarray]] = {}
    batches = data if max_batches is None else itertools.islice(data, max_batches)
    for batch in batches:
        batch = batch.to(device)
        scores = (model.encode_queries(batch).float() @ items.float().T).cpu().numpy()  # [B, N]
        targets = corpus.columns(model.item_ids(batch).cpu().numpy())
        seen = corpus.seen(model.user_keys(batch).cpu().numpy())
        found = metrics.ranking_metrics(scores, [t[None] for t in targets], seen, corpus.ks)
        for k, v in found.items():
            per_query.setdefault(k, []).append(v)
    names = [f"{m}@{k}" for k in sorted(set(corpus.ks)) for m in metrics.RANKING_METRICS]
    local = {n: np.concatenate(per_query[n]) if n in per_query else np.empty(0) for n in names}
    arrays = metrics.gather_arrays(local)
    return {
        f"retrieval/{n}": float(v.mean()) if len(v) else None
        for n, v in arrays.items()  # no query at all: not applicable
    }


def evaluate(
    model: nn.Module,
    data: Iterable[Batch],
    tasks: list[TaskConfig],
    device: torch.device,
    max_batches: int | None = None,
    autocast: bool = False,
) -> dict[str, float | None]:
    """``{"<task>/<metric>": value}``; identical on every rank (predictions are all-gathered).

    A :class:`CorpusRetrievalModel` adds ``retrieval/<metric>@K`` (full-corpus ranking).
    """
    inner = unwrapped(model)
    ranks_corpus = isinstance(inner, CorpusRetrievalModel)
    if max_batches is not None and ranks_corpus:
        # the corpus ranking reads the data a second time: both passes must see the same
        # first ``max_batches`` batches (a reader resumes where the first pass stopped)
        data = list(itertools.islice(data, max_batches))
    preds = predict(model, data, tasks, device, max_batches, autocast)
    result: dict[str, float | None] = {}
    for t in tasks:
        arrays = metrics.gather_arrays(preds[t.name])
        for k, v in task_metrics(t, arrays).items():
            result[f"{t.name}/{k}"] = v
    if isinstance(inner, CorpusRetrievalModel):
        inner.eval()
        result.update(retrieval_metrics(inner, data, device, max_batches))
    return result
