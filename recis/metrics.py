"""Evaluation metrics on numpy arrays, and their cross-rank form.

Binary (one task): :func:`auc` (rank-based, ties averaged), :func:`gauc`
(AUC per group, weighted by group size), :func:`logloss`,
:func:`normalized_entropy` (logloss over the entropy of the base rate) and
:func:`calibration` (predicted / observed positives), :func:`group_ndcg` (NDCG@K per
query group, graded gains). Graded relevance per query:
:func:`recall_at_k` and :func:`ndcg_at_k` over a ``[Q, N]`` score matrix.
Retrieval over a whole corpus: :func:`ranking_metrics` (HR / Recall / NDCG / MRR@K,
the user's seen items excluded, ties broken uniformly at random in expectation).

A metric that does not apply to the data (AUC with one class, GAUC with no group
holding both classes, logloss of labels outside ``[0, 1]``) is ``None``, never
``nan``: callers print it as ``n/a`` and JSON writes ``null``.

Across ranks: these metrics are not decomposable (AUC needs the global
ranking), so :func:`gather_arrays` all-gathers each rank's predictions over
``torch.distributed`` and every rank computes the same global value. Eval
sets are small enough for that; the per-step training path never calls it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


def auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U); tied scores share their average rank.

    ``None`` (not applicable) when only one class is present.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel() > 0.5
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
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


def logloss(probs: np.ndarray, labels: np.ndarray, eps: float = 1e-7) -> float | None:
    """Mean binary cross-entropy of probabilities against labels in ``[0, 1]``.

    ``None`` when there are no rows or a label lies outside ``[0, 1]`` (a rating, a count):
    cross-entropy is not defined there, and the formula would go negative.
    """
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64).ravel()
    if y.size == 0 or y.min() < 0.0 or y.max() > 1.0:
        return None
    return max(float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))), 0.0)


def normalized_entropy(probs: np.ndarray, labels: np.ndarray, eps: float = 1e-7) -> float | None:
    """Logloss divided by the logloss of always predicting the base rate (He et al., 2014).

    Below 1 means better than the constant predictor; ``None`` for one class (or where
    logloss does not apply).
    """
    y = np.asarray(labels, dtype=np.float64).ravel()
    rate = float(y.mean()) if y.size else 0.0
    loss = logloss(probs, labels, eps)
    if loss is None or rate <= 0.0 or rate >= 1.0:
        return None
    base = -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate))
    return float(loss / base)


def calibration(probs: np.ndarray, labels: np.ndarray) -> float | None:
    """Sum of predicted probabilities over the number of positives (1.0 is calibrated).

    ``None`` without positives.
    """
    pos = float(np.asarray(labels, dtype=np.float64).sum())
    if pos <= 0.0:
        return None
    return float(np.asarray(probs, dtype=np.float64).sum() / pos)


def gauc(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float | None:
    """Group AUC: AUC within each group (user or query), averaged with weights = group size.

    Groups whose labels are all equal have no AUC and are skipped, as in
    Zhou et al. (DIN, 2018). ``None`` if no group has both classes.
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
        value = auc(scores[idx], y)
        assert value is not None  # both classes are in the group (checked above)
        total += value * y.size
        weight += y.size
    return total / weight if weight else None


def group_ndcg(
    scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, k: int = 10
) -> float | None:
    """Mean NDCG@k per group (query) with graded gains ``2**label - 1`` (qbqtc's protocol).

    Only groups with at least two rows and a label above 0 count; tied scores take the
    expected DCG of a uniformly random order. ``None`` when no group qualifies.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    gains = 2.0 ** np.asarray(labels, dtype=np.float64).ravel() - 1.0
    groups = np.asarray(groups).ravel()
    order = np.argsort(groups, kind="stable")
    g = groups[order]
    bounds = np.concatenate(([0], np.flatnonzero(g[1:] != g[:-1]) + 1, [g.size]))
    values = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        idx = order[lo:hi]
        if len(idx) < 2 or not (gains[idx] > 0).any():
            continue
        s, gain = scores[idx], gains[idx]
        ideal = np.sort(gain)[::-1][:k]
        idcg = float((ideal / np.log2(np.arange(len(ideal)) + 2.0)).sum())
        dcg, pos = 0.0, 0
        for level in np.unique(s)[::-1]:  # tie blocks, best score first
            tied = s == level
            n = int(tied.sum())
            ranks = np.arange(pos, min(pos + n, k))
            dcg += float(gain[tied].mean()) * float((1.0 / np.log2(ranks + 2.0)).sum())
            pos += n
        values.append(dcg / idcg)
    return float(np.mean(values)) if values else None


def _topk_order(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` best scores per row, best first: ``[Q, k]``."""
    k = min(k, scores.shape[1])
    # stable sort on -score: ties keep item order, so results are deterministic
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def recall_at_k(scores: np.ndarray, relevance: np.ndarray, k: int) -> float | None:
    """Mean over queries of |relevant in top k| / |relevant|; queries without any are skipped
    (``None`` when no query has a relevant item).

    Shapes: ``scores`` and ``relevance`` ``[Q, N]`` (relevance > 0 counts as relevant).
    """
    scores = np.asarray(scores, dtype=np.float64)
    rel = np.asarray(relevance, dtype=np.float64) > 0
    top = _topk_order(scores, k)
    hits = np.take_along_axis(rel, top, axis=1).sum(axis=1)
    n_rel = rel.sum(axis=1)
    keep = n_rel > 0
    return float(np.mean(hits[keep] / n_rel[keep])) if keep.any() else None


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


RANKING_METRICS = ("hr", "recall", "ndcg", "mrr")


def _keep_fraction(m: int, r: int, c: int) -> float:
    """P(none of ``r`` marked among ``c`` draws from ``m`` without replacement): C(m-r, c)/C(m, c)."""
    if c >= m:
        return 0.0 if r else 1.0
    p = 1.0
    for i in range(c):
        p *= (m - r - i) / (m - i)
        if p == 0.0:
            break
    return p


def _query_metrics(
    s: np.ndarray, relevant: np.ndarray, n_relevant: int, ks: list[int]
) -> dict[str, float]:
    """One query: ``s [N']`` candidate scores, ``relevant`` candidate positions (in ``s``),
    ``n_relevant`` the relevant items in all (unreachable ones count as misses)."""
    out = {f"{m}@{k}": 0.0 for k in ks for m in RANKING_METRICS}
    if not len(relevant):
        return out
    rel_s = s[relevant]
    ahead = (s[None, :] > rel_s[:, None]).sum(1)  # [R] candidates strictly ahead
    tied = (s[None, :] == rel_s[:, None]).sum(1)  # [R] block size, the item itself included
    best = int(np.argmax(rel_s))
    g, m = int(ahead[best]), int(tied[best])  # the block of the best relevant item
    r = int((rel_s == rel_s[best]).sum())  # relevant items in that block
    for k in ks:
        # a relevant item's rank is uniform over its tied block: exact expectations
        recall = ndcg = 0.0
        for a, t in zip(ahead.tolist(), tied.tolist()):
            ranks = np.arange(a, min(a + t, k))
            recall += len(ranks) / t
            ndcg += float((1.0 / np.log2(ranks + 2.0)).sum()) / t
        ideal = float((1.0 / np.log2(np.arange(min(k, n_relevant)) + 2.0)).sum())
        out[f"recall@{k}"] = recall / n_relevant
        out[f"ndcg@{k}"] = ndcg / ideal
        if g < k:  # some of the best block is in the top k
            out[f"hr@{k}"] = 1.0 - _keep_fraction(m, r, k - g)
            # first relevant at block position j: P = r/(m-j) * prod_{i<j} (m-r-i)/(m-i)
            mrr, none_yet = 0.0, 1.0
            for j in range(min(m - r + 1, k - g)):
                mrr += none_yet * r / (m - j) / (g + j + 1)
                none_yet *= (m - r - j) / (m - j)
            out[f"mrr@{k}"] = mrr
    return out


def ranking_metrics(
    scores: np.ndarray,
    relevant: list[np.ndarray],
    exclude: list[np.ndarray] | None = None,
    ks: tuple[int, ...] | list[int] = (10,),
) -> dict[str, np.ndarray]:
    """Per-query HR@K, Recall@K, NDCG@K and MRR@K of ranking a whole corpus.

    ``scores [Q, N]`` every corpus item's score per query; ``relevant[q]`` the column
    indices of query ``q``'s relevant items (``-1``: an item outside the corpus, a miss);
    ``exclude[q]`` the columns removed from ``q``'s candidates (the items the user already
    interacted with in training; an excluded relevant item is a miss). Ties are broken
    uniformly at random, as an exact expectation (no RNG): with one relevant item at
    ``g`` candidates strictly ahead and ``e`` others tied, its rank is uniform on
    ``g .. g + e``. HR@K: a relevant item in the top K; Recall@K: the fraction of the
    relevant items there; NDCG@K: binary gains over the ideal ``min(K, |R|)`` hits;
    MRR@K: reciprocal rank of the first relevant item, 0 past K. With one relevant item
    HR and Recall agree. Queries without relevant items score 0.

    Returns ``{"hr@K" | "recall@K" | "ndcg@K" | "mrr@K": values [Q]}``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n_items = scores.shape[1]
    ks = sorted({int(k) for k in ks})
    rows = []
    for q in range(scores.shape[0]):
        keep = np.ones(n_items, dtype=bool)
        if exclude is not None and len(exclude[q]):
            ex = np.asarray(exclude[q], dtype=np.int64)
            keep[ex[(ex >= 0) & (ex < n_items)]] = False
        rel = np.asarray(relevant[q], dtype=np.int64)
        inside = (rel >= 0) & (rel < n_items)
        rel = np.unique(rel[inside])
        n_rel = len(rel) + int((~inside).sum())
        rel = rel[keep[rel]]
        position = np.cumsum(keep) - 1  # column -> position among the candidates
        rows.append(_query_metrics(scores[q, keep], position[rel], n_rel, ks))
    names = [f"{m}@{k}" for k in ks for m in RANKING_METRICS]
    return {n: np.array([r[n] for r in rows], dtype=np.float64) for n in names}


@dataclass
class RetrievalCorpus:
    """An encoded item corpus and each user's seen items.

    Shapes: ``N`` items, ``D`` embedding dim, ``U`` users with seen items.

    Args:
        ids: ``[N]`` item ids, sorted ascending (column ``j`` of the score matrix is ``ids[j]``).
        embeddings: ``[N, D]`` item vectors (a query scores ``<u, v>``).
        users: ``[U]`` sorted user keys; ``seen_offsets [U + 1]`` and ``seen_items`` (corpus
            columns) hold user ``users[i]``'s seen items at ``seen_items[off[i]:off[i+1]]``.
        ks: cut-offs to report.
    """

    ids: np.ndarray
    embeddings: torch.Tensor
    users: np.ndarray
    seen_offsets: np.ndarray
    seen_items: np.ndarray
    ks: tuple[int, ...] = (10,)

    def columns(self, item_ids: np.ndarray) -> np.ndarray:
        """Corpus column of each id, ``-1`` for ids outside the corpus."""
        pos = np.searchsorted(self.ids, item_ids).clip(max=max(len(self.ids) - 1, 0))
        found = len(self.ids) > 0 and self.ids[pos] == item_ids
        return np.where(found, pos, -1)

    def seen(self, user_keys: np.ndarray) -> list[np.ndarray]:
        """The seen corpus columns of each user (empty for users without any)."""
        pos = np.searchsorted(self.users, user_keys).clip(max=max(len(self.users) - 1, 0))
        hit = (self.users[pos] == user_keys) if len(self.users) else np.zeros(len(user_keys), bool)
        off = self.seen_offsets
        empty = np.empty(0, dtype=np.int64)
        return [self.seen_items[off[p] : off[p + 1]] if h else empty for p, h in zip(pos, hit)]


def gather_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Concatenate each rank's 1-d arrays over ``torch.distributed`` (rank order); no-op alone.

    Every rank gets every key any rank has (a rank may have had no rows of a kind): the
    global AUC is computed over all ranks' predictions, not averaged over per-rank AUCs.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return arrays
    parts: list[dict[str, np.ndarray] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, arrays)
    keys = list(dict.fromkeys(k for p in parts if p is not None for k in p))
    return {k: np.concatenate([p[k] for p in parts if p is not None and k in p]) for k in keys}


BINARY_METRICS = ("auc", "logloss", "ne", "calibration")


def binary_metrics(
    probs: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None
) -> dict[str, float | None]:
    """The standard report for one binary task: auc, logloss, ne, calibration (+ gauc and
    per-group ndcg@10 with ``groups``).

    Values that do not apply are ``None`` (see the module docstring), and so is every
    value when a prediction is not finite (a diverged model has no AUC, only a NaN that
    would otherwise rank by row order).
    """
    if not np.isfinite(np.asarray(probs, dtype=np.float64)).all():
        names = ["auc", "logloss", "ne", "calibration"] + (
            ["gauc", "ndcg@10"] if groups is not None else []
        )
        return dict.fromkeys(names)
    out = {
        "auc": auc(probs, labels),
        "logloss": logloss(probs, labels),
        "ne": normalized_entropy(probs, labels),
        "calibration": calibration(probs, labels),
    }
    if groups is not None:
        out["gauc"] = gauc(probs, labels, groups)
        out["ndcg@10"] = group_ndcg(probs, labels, groups, 10)
    return out


def torch_to_numpy(t: torch.Tensor) -> np.ndarray:
    """Detached float64/int64 numpy copy of a tensor on any device (bf16 included)."""
    t = t.detach()
    if t.is_floating_point():
        t = t.double()
    return t.cpu().numpy()
