"""Metrics against reference computations (sklearn, and by hand), single and across 2 ranks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.metrics import log_loss, ndcg_score, roc_auc_score

from recis import metrics


@pytest.fixture
def binary():
    rng = np.random.default_rng(0)
    n = 3000
    groups = rng.integers(0, 40, size=n)
    scores = rng.random(n)
    labels = (rng.random(n) < 0.2 + 0.5 * scores * (groups % 3 != 0)).astype(np.float32)
    scores = np.round(scores, 2)  # many ties
    return scores, labels, groups


def test_auc_logloss_match_sklearn(binary) -> None:
    s, y, _ = binary
    assert metrics.auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert metrics.logloss(s, y) == pytest.approx(log_loss(y, np.clip(s, 1e-7, 1 - 1e-7)), 1e-9)
    assert metrics.auc(s, np.ones_like(y)) is None  # one class: not applicable, never nan


def test_normalized_entropy_and_calibration(binary) -> None:
    s, y, _ = binary
    p = y.mean()
    base = -(p * np.log(p) + (1 - p) * np.log(1 - p))
    assert metrics.normalized_entropy(s, y) == pytest.approx(metrics.logloss(s, y) / base)
    # the base rate itself has NE 1
    assert metrics.normalized_entropy(np.full_like(s, p), y) == pytest.approx(1.0, abs=1e-6)
    assert metrics.calibration(s, y) == pytest.approx(s.sum() / y.sum())


def test_gauc_matches_per_group_sklearn(binary) -> None:
    s, y, g = binary
    num = den = 0.0
    for k in np.unique(g):
        m = g == k
        if 0 < y[m].sum() < m.sum():
            num += roc_auc_score(y[m], s[m]) * m.sum()
            den += m.sum()
    assert metrics.gauc(s, y, g) == pytest.approx(num / den, abs=1e-12)
    # a group with one class only is skipped
    g2 = g.copy()
    g2[:5], y2 = 999, y.copy()
    y2[:5] = 1.0
    assert metrics.gauc(s, y2, g2) is not None


def test_recall_and_ndcg_at_k() -> None:
    rng = np.random.default_rng(1)
    scores = rng.random((20, 50))
    rel = (rng.random((20, 50)) < 0.1).astype(np.float64)
    rel[3] = 0  # a query without relevant items
    graded = rel * rng.integers(1, 4, size=rel.shape)
    for k in (1, 5, 10):
        assert metrics.ndcg_at_k(scores, graded, k) == pytest.approx(
            ndcg_score(graded, scores, k=k), abs=1e-12
        )
        top = np.argsort(-scores, axis=1)[:, :k]
        keep = rel.sum(1) > 0
        ref = [rel[q, top[q]].sum() / rel[q].sum() for q in range(20) if keep[q]]
        assert metrics.recall_at_k(scores, rel, k) == pytest.approx(np.mean(ref))


def test_matches_torchmetrics_retrieval() -> None:
    from torchmetrics.retrieval import RetrievalNormalizedDCG, RetrievalRecall

    rng = np.random.default_rng(2)
    scores = rng.random((8, 30))
    rel = rng.random((8, 30)) < 0.2
    rel[:, 0] = True
    idx = torch.arange(8).repeat_interleave(30)
    preds, target = torch.tensor(scores).flatten(), torch.tensor(rel).flatten()
    tm_recall = RetrievalRecall(top_k=5)(preds, target, indexes=idx).item()
    tm_ndcg = RetrievalNormalizedDCG(top_k=5)(preds, target, indexes=idx).item()
    assert metrics.recall_at_k(scores, rel, 5) == pytest.approx(tm_recall, abs=1e-6)
    assert metrics.ndcg_at_k(scores, rel, 5) == pytest.approx(tm_ndcg, abs=1e-6)


def _rank_main(rank: int, port: int, s, y, g, queue) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        half = slice(rank * len(s) // 2, (rank + 1) * len(s) // 2)
        arrays = metrics.gather_arrays({"pred": s[half], "label": y[half], "group": g[half]})
        queue.put((rank, metrics.binary_metrics(arrays["pred"], arrays["label"], arrays["group"])))
    finally:
        dist.destroy_process_group()


def test_metrics_are_global_across_two_gloo_ranks(binary) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s, y, g = binary
    ctx = mp.get_context("fork")  # fork: no re-import of torch in the children
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank_main, args=(r, port, s, y, g, queue)) for r in (0, 1)]
    for p in procs:
        p.start()
    res = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    want = metrics.binary_metrics(s, y, g)
    for rank in (0, 1):
        assert res[rank] == pytest.approx(want)
    # and the halves alone would differ: gathering matters
    assert metrics.auc(s[:1500], y[:1500]) != pytest.approx(want["auc"])


def test_metrics_that_do_not_apply_are_none_never_nan(binary) -> None:
    s, y, g = binary
    ones = np.ones_like(y)
    got = metrics.binary_metrics(s, ones, g)  # a positives-only set (retrieval rows)
    assert got["auc"] is None and got["gauc"] is None and got["ne"] is None
    assert got["logloss"] == pytest.approx(-np.mean(np.log(np.clip(s, 1e-7, 1))))
    assert got["logloss"] >= 0 and got["calibration"] is not None
    zeros = metrics.binary_metrics(s, np.zeros_like(y), g)
    assert zeros["calibration"] is None and zeros["auc"] is None
    # labels that are not probabilities (counts, star ratings): cross-entropy does not apply
    counts = y * 3
    assert metrics.logloss(s, counts) is None and metrics.normalized_entropy(s, counts) is None
    assert metrics.auc(s, counts) == pytest.approx(metrics.auc(s, y))  # label > 0.5 ranks
    assert metrics.recall_at_k(np.ones((2, 3)), np.zeros((2, 3)), 1) is None
    for value in [*got.values(), *zeros.values()]:
        assert value is None or np.isfinite(value)


def test_group_ndcg_by_hand_with_graded_gains_and_ties() -> None:
    # query 0: scores 3, 2, 1 with labels 0, 2, 1 -> gains 0, 3, 1 in that order
    # query 1: one row (skipped); query 2: no label > 0 (skipped)
    # query 3: tied scores, labels 1, 0 -> expected DCG = mean gain 0.5 over ranks 0 and 1
    s = np.array([3.0, 2.0, 1.0, 5.0, 1.0, 2.0, 0.5, 0.5])
    y = np.array([0, 2, 1, 1, 0, 0, 1, 0])
    g = np.array([0, 0, 0, 1, 2, 2, 3, 3])
    q0 = (3 / np.log2(3) + 1 / np.log2(4)) / (3 + 1 / np.log2(3))
    q3 = 0.5 * (1 + 1 / np.log2(3)) / 1.0
    assert metrics.group_ndcg(s, y, g, k=10) == pytest.approx((q0 + q3) / 2)
    # k=1: query 0 puts a gain-0 row first; query 3 has the relevant row first half the time
    assert metrics.group_ndcg(s, y, g, k=1) == pytest.approx((0 + 0.5) / 2)
    assert metrics.group_ndcg(s, np.zeros_like(y), g) is None
    assert "ndcg@10" in metrics.binary_metrics(s / 6, y > 0, g)


def test_non_finite_predictions_have_no_metric() -> None:
    """A diverged model's NaN scores would otherwise get an AUC that depends on row order."""
    labels = np.array([1, 0, 1, 0])
    for probs in (np.full(4, np.nan), np.array([0.2, np.inf, 0.4, 0.1])):
        out = metrics.binary_metrics(probs, labels, groups=np.array([0, 0, 1, 1]))
        assert out and all(v is None for v in out.values())
