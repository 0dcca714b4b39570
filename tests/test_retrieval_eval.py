"""Full-corpus retrieval evaluation with seen-item exclusion, against rankings done by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from recis import metrics


def test_seen_items_are_excluded_against_a_hand_ranking() -> None:
    # corpus of 6 items; the user saw items 0 and 3 in training; the test item is 4
    scores = np.array([[0.9, 0.1, 0.5, 0.8, 0.7, 0.2]])
    # ranking of the unseen items by hand: 4 (0.7), 2 (0.5), 5 (0.2), 1 (0.1) -> rank 0
    got = metrics.ranking_metrics(scores, [np.array([4])], [np.array([0, 3])], ks=(1, 2))
    assert got["hr@1"][0] == 1.0 and got["ndcg@1"][0] == 1.0 and got["mrr@1"][0] == 1.0
    # without the exclusion, items 0 and 3 rank ahead of it: rank 2, a miss at K=2
    plain = metrics.ranking_metrics(scores, [np.array([4])], None, ks=(1, 2, 3))
    assert plain["hr@2"][0] == 0.0 and plain["hr@3"][0] == 1.0
    assert plain["ndcg@3"][0] == pytest.approx(1 / math.log2(4))
    assert plain["mrr@3"][0] == pytest.approx(1 / 3)
    # test item 1 after exclusion: behind 4, 2, 5 -> rank 3 (0-based)
    late = metrics.ranking_metrics(scores, [np.array([1])], [np.array([0, 3])], ks=(3, 4))
    assert late["hr@3"][0] == 0.0 and late["hr@4"][0] == 1.0
    assert late["ndcg@4"][0] == pytest.approx(1 / math.log2(5))
    assert late["mrr@4"][0] == pytest.approx(1 / 4)


def test_an_excluded_or_unknown_test_item_is_a_miss() -> None:
    scores = np.array([[0.9, 0.1, 0.5], [0.9, 0.1, 0.5]])
    got = metrics.ranking_metrics(scores, [np.array([0]), np.array([-1])], [np.array([0]), []])
    for name in ("hr@10", "recall@10", "ndcg@10", "mrr@10"):
        assert got[name].tolist() == [0.0, 0.0]


def test_ties_match_the_readme_expectation() -> None:
    # ml_latest_small/baselines.py: rank ~ U{g, ..., g+e}, expected HR and NDCG
    scores = np.array([[3.0, 2.0, 2.0, 2.0, 2.0, 1.0]])
    got = metrics.ranking_metrics(scores, [np.array([2])], None, ks=(3,))
    g, e, k = 1, 3, 3  # one item ahead, three others tied with the test item
    ranks = np.arange(g, min(g + e, k - 1) + 1)
    assert got["hr@3"][0] == pytest.approx(len(ranks) / (e + 1))
    assert got["ndcg@3"][0] == pytest.approx((1 / np.log2(ranks + 2)).sum() / (e + 1))


def _brute_force(scores: np.ndarray, rel: set[int], exclude: set[int], k: int) -> dict[str, float]:
    """Average each metric over every order of the tied items (the definition, by hand)."""
    cand = [i for i in range(len(scores)) if i not in exclude]
    levels = sorted({scores[i] for i in cand}, reverse=True)
    blocks = [[i for i in cand if scores[i] == s] for s in levels]
    totals = {"hr": 0.0, "recall": 0.0, "ndcg": 0.0, "mrr": 0.0}
    count = 0
    ideal = sum(1 / math.log2(r + 2) for r in range(min(k, len(rel))))
    for orders in itertools.product(*(itertools.permutations(b) for b in blocks)):
        ranking = [i for block in orders for i in block][:k]
        hits = [r for r, i in enumerate(ranking) if i in rel]
        totals["hr"] += 1.0 if hits else 0.0
        totals["recall"] += len(hits) / len(rel)
        totals["ndcg"] += sum(1 / math.log2(r + 2) for r in hits) / ideal
        totals["mrr"] += 1 / (hits[0] + 1) if hits else 0.0
        count += 1
    return {m: v / count for m, v in totals.items()}


@pytest.mark.parametrize("seed", range(6))
def test_several_relevant_items_with_ties_match_every_tie_order(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 8
    scores = rng.integers(0, 3, size=n).astype(np.float64)  # heavy ties
    rel = set(rng.choice(n, size=int(rng.integers(1, 4)), replace=False).tolist())
    exclude = set(rng.choice([i for i in range(n) if i not in rel], size=2, replace=False).tolist())
    for k in (1, 2, 4):
        got = metrics.ranking_metrics(
            scores[None, :], [np.array(sorted(rel))], [np.array(sorted(exclude))], ks=(k,)
        )
        want = _brute_force(scores, rel, exclude, k)
        for m, v in want.items():
            assert got[f"{m}@{k}"][0] == pytest.approx(v, abs=1e-12), (m, k)
