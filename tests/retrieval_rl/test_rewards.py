"""Reward components against hand-made channels and hand-computed sums."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recis.errors import ConfigError
from recis.retrieval_rl.rewards import (
    BM25Channel,
    ClickReward,
    ExclusivityReward,
    LexicalRelevanceScorer,
    QualityReward,
    RelevanceReward,
    WeightedReward,
)

QUERIES = torch.tensor([0, 1])
ROWS = torch.tensor([[0, 1, 2], [3, 4, 0]])


def test_exclusivity_against_hand_made_channels() -> None:
    lexical = [np.array([0, 2]), np.array([4])]  # channel A: query 0 -> items 0, 2
    popular = [np.array([0]), np.array([9])]  # channel B
    r = ExclusivityReward([lexical, popular])(QUERIES, ROWS)
    # item 0 for query 0: both channels return it -> 0; item 2: one of two -> 0.5
    assert torch.equal(r, torch.tensor([[0.0, 1.0, 0.5], [1.0, 0.5, 1.0]]))
    with pytest.raises(ConfigError, match="exclusivity"):
        ExclusivityReward([])


def test_weighted_combination_by_hand() -> None:
    click = ClickReward([np.array([1]), np.array([0, 3])])
    quality = QualityReward(torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]))
    excl = ExclusivityReward([[np.array([2]), np.array([])]])
    total, means = WeightedReward([(click, 2.0), (quality, 1.0), (excl, 0.5)])(QUERIES, ROWS)
    c = torch.tensor([[0.0, 1, 0], [1, 0, 1]])
    q = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.1]])
    e = torch.tensor([[1.0, 1, 0], [1, 1, 1]])
    assert torch.allclose(total, 2 * c + q + 0.5 * e)
    assert means["reward_click"] == pytest.approx(0.5)
    assert means["reward_quality"] == pytest.approx(float(q.mean()))
    assert means["reward"] == pytest.approx(float((2 * c + q + 0.5 * e).mean()))


def test_bm25_channel_returns_the_lexical_match_first() -> None:
    items = ["red running shoes", "blue phone case", "红色连衣裙", "phone charger cable"]
    found = BM25Channel(items).results(["phone case", "连衣裙", "zzz"], m=2)
    assert found[0][0] == 1 and set(found[0]) == {1, 3}
    assert list(found[1]) == [2]  # items sharing no gram score 0 and are left out
    assert len(found[2]) == 0


class _Counting:
    def __init__(self) -> None:
        self.pairs = 0

    def score(self, queries: list[str], titles: list[str]) -> torch.Tensor:
        self.pairs += len(queries)
        return torch.tensor([float(q[0] == t[0]) for q, t in zip(queries, titles)])


def test_relevance_reward_scores_each_pair_once() -> None:
    scorer = _Counting()
    reward = RelevanceReward(scorer, ["apple", "pear"], ["ax", "px", "ay", "bz", "pq"])
    r = reward(QUERIES, ROWS)
    assert torch.equal(r, torch.tensor([[1.0, 0, 1], [0, 1, 0]]))
    reward(QUERIES, ROWS)
    assert scorer.pairs == 6  # the second call came from the cache


def test_lexical_scorer_ranks_overlap_above_none() -> None:
    qs = ["红色连衣裙", "手机壳", "running shoes", "phone case"] * 5
    ts = ["红色连衣裙夏季", "苹果手机壳", "running shoes men", "phone case blue"] * 5
    neg = ts[1:] + ts[:1]
    scorer = LexicalRelevanceScorer.fit(qs + qs, ts + neg, np.array([1] * 20 + [0] * 20))
    s = scorer.score(["手机壳", "手机壳"], ["透明手机壳", "running shoes"])
    assert float(s[0]) > 0.5 > float(s[1])
