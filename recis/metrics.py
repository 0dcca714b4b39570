"""Evaluation metrics on numpy arrays, and their cross-rank form.

Binary (one task): :func:`auc` (rank-based, ties averaged), :func:`gauc`
(AUC per group, weighted by group size), :func:`logloss`,
:func:`normalized_entropy` (logloss over the entropy of the base rate) and
:func:`calibration` (predicted / observed positives). Retrieval:
:func:`recall_at_k` and :func:`ndcg_at_k` over a ``[Q, N]`` score matrix.

Across ranks: these metrics are not decomposable (AUC needs the global
ranking), so :func:`gather_arrays` all-gathers each rank's predictions over
``torch.distributed`` and every rank computes the same global value. Eval
sets are small enough for that; the per-step training path never calls it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U); tied scores share their average rank.

    Returns ``nan`` when only one class is present.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel() > 0.5
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # average rank within runs of equal scores
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [scores.size]))
    avg = (starts + ends + 1) / 2.0  # 1-based average rank of each run
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def logloss(probs: np.ndarray, labels: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities against 0/1 labels."""
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64).ravel()
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def normalized_entropy(probs: np.ndarray, labels: np.ndarray, eps: float = 1e-7) -> float:
    """Logloss divided by the logloss of always predicting the base rate (He et al., 2014).

    Below 1 means better than the constant predictor; ``nan`` for one class.
    """
    y = np.asarray(labels, dtype=np.float64).ravel()
    rate = float(y.mean()) if y.size else 0.0
    if rate <= 0.0 or rate >= 1.0:
        return float("nan")
    base = -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate))
    return float(logloss(probs, labels, eps) / base)


def calibration(probs: np.ndarray, labels: np.ndarray) -> float:
    """Sum of predicted probabilities over the number of positives (1.0 is calibrated)."""
    pos = float(np.asarray(labels, dtype=np.float64).sum())
    if pos == 0.0:
        return float("nan")
    return float(np.asarray(probs, dtype=np.float64).sum() / pos)


def gauc(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """Group AUC: AUC within each group (user or query), averaged with weights = group size.

    Groups whose labels are all equal have no AUC and are skipped, as in
    Zhou et al. (DIN, 2018). ``nan`` if no group has both classes.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel() > 0.5
    groups = np.asarray(groups).ravel()
    order = np.argsort(groups, kind="stable")
    g = groups[order]
    bounds = np.concatenate(([0], np.flatnonzero(g[1:] != g[:-1]) + 1, [g.size]))
    total, weight = 0.0, 0
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        idx = order[lo:hi]
        y = labels[idx]
        n_pos = int(y.sum())
        if n_pos == 0 or n_pos == y.size:
            continue
        total += auc(scores[idx], y) * y.size
        weight += y.size
    return total / weight if weight else float("nan")


def _topk_order(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` best scores per row, best first: ``[Q, k]``."""
    k = min(k, scores.shape[1])
    # stable sort on -score: ties keep item order, so results are deterministic
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def recall_at_k(scores: np.ndarray, relevance: np.ndarray, k: int) -> float:
    """Mean over queries of |relevant in top k| / |relevant|; queries without any are skipped.

    Shapes: ``scores`` and ``relevance`` ``[Q, N]`` (relevance > 0 counts as relevant).
    """
    scores = np.asarray(scores, dtype=np.float64)
    rel = np.asarray(relevance, dtype=np.float64) > 0
    top = _topk_order(scores, k)
    hits = np.take_along_axis(rel, top, axis=1).sum(axis=1)
    n_rel = rel.sum(axis=1)
    keep = n_rel > 0
    return float(np.mean(hits[keep] / n_rel[keep])) if keep.any() else float("nan")


def ndcg_at_k(scores: np.ndarray, relevance: np.ndarray, k: int) -> float:
    """Mean NDCG@k with linear gains (``rel / log2(rank + 1)``), as sklearn's ``ndcg_score``.

    Shapes: ``[Q, N]``. Queries with no relevant item score 0, as in sklearn.
    """
    scores = np.asarray(scores, dtype=np.float64)
    rel = np.asarray(relevance, dtype=np.float64)
    top = _topk_order(scores, k)
    discount = 1.0 / np.log2(np.arange(top.shape[1]) + 2.0)
    dcg = (np.take_along_axis(rel, top, axis=1) * discount).sum(axis=1)
    ideal = -np.sort(-rel, axis=1)[:, : top.shape[1]]
    idcg = (ideal * discount).sum(axis=1)
    out = np.zeros_like(dcg)
    np.divide(dcg, idcg, out=out, where=idcg > 0)
    return float(out.mean())


def gather_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Concatenate each rank's 1-d arrays over ``torch.distributed`` (rank order); no-op alone."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return arrays
    parts: list[dict[str, np.ndarray] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, arrays)
    return {k: np.concatenate([p[k] for p in parts if p is not None]) for k in arrays}


BINARY_METRICS = ("auc", "logloss", "ne", "calibration")


def binary_metrics(
    probs: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None
) -> dict[str, float]:
    """The standard report for one binary task: auc, logloss, ne, calibration (+ gauc)."""
    out = {
        "auc": auc(probs, labels),
        "logloss": logloss(probs, labels),
        "ne": normalized_entropy(probs, labels),
        "calibration": calibration(probs, labels),
    }
    if groups is not None:
        out["gauc"] = gauc(probs, labels, groups)
    return out


def torch_to_numpy(t: torch.Tensor) -> np.ndarray:
    """Detached float64/int64 numpy copy of a tensor on any device (bf16 included)."""
    t = t.detach()
    if t.is_floating_point():
        t = t.double()
    return t.cpu().numpy()
