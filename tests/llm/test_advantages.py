"""The group rules against hand-computed groups."""

from __future__ import annotations

import pytest
import torch

from recis.llm.advantages import (
    difficulty_weights,
    dual_group_advantages,
    group_advantages,
    intergroup_scales,
    replay_slots,
)


def test_group_advantages_match_a_hand_computation():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    adv = group_advantages(r, 4)
    # group 1: mean 0.25, unbiased std 0.5 -> (0.75, -0.25 x3) / (0.5 + 1e-4)
    want = torch.tensor([0.75, -0.25, -0.25, -0.25]) / 0.5001
    assert torch.allclose(adv[:4], want, atol=1e-6)
    assert torch.equal(adv[4:], torch.zeros(4))  # all equal: no signal
    assert torch.allclose(
        group_advantages(r, 4, scale=False)[:4], torch.tensor([0.75, -0.25, -0.25, -0.25])
    )


def test_difficulty_filter_drops_or_downweights_uniform_groups():
    correct = torch.tensor([1, 0, 1, 0, 0, 0, 1, 1, 1]).bool()  # mixed, all wrong, all right
    assert difficulty_weights(correct, 3, "drop").tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0]
    w = difficulty_weights(correct, 3, "downweight", 0.25).tolist()
    assert w == [1, 1, 1, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25]
    assert difficulty_weights(correct, 3, "none").tolist() == [1.0] * 9


def test_intergroup_scaling_by_the_correctness_gap():
    # query 1: without context 1/4 right, with it 3/4 -> gap +0.5
    # query 2: without 4/4, with 2/4 -> gap -0.5
    correct = torch.tensor([1, 0, 0, 0, 1, 1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 0]).bool()
    scales, gap = intergroup_scales(correct, 8, alpha=1.0, min_scale=0.0)
    assert gap.tolist() == [0.5, -0.5]
    assert scales.tolist() == [0.5] * 4 + [1.5] * 4 + [1.5] * 4 + [0.5] * 4
    scales, _ = intergroup_scales(correct, 8, alpha=4.0, min_scale=0.2)
    want = torch.tensor([0.2] * 4 + [3.0] * 4)  # 1 - 4 * 0.5 clamps at min_scale
    assert torch.allclose(scales[:8], want)
    # advantages are normalised within each half (the two groups), not across the query
    r = correct.float()
    adv = dual_group_advantages(r, 8)
    assert torch.allclose(adv[:4], group_advantages(r[:4], 4))
    with pytest.raises(ValueError, match="odd"):
        intergroup_scales(correct[:6], 3)


def test_guided_replay_picks_the_first_wrong_rollout_of_low_accuracy_groups():
    correct = torch.tensor([0, 1, 0, 0, 1, 1, 0, 1, 0, 0, 0, 0]).bool()  # acc 1/4, 3/4, 0
    assert replay_slots(correct, 4, below=0.5) == [0, 8]
    assert replay_slots(correct, 4, below=0.2) == [8]


def test_offline_prefilter_keeps_examples_the_model_gets_partly_right():
    from recis.llm.config import LevelsConfig, PromptConfig
    from recis.llm.example import Example
    from recis.llm.pools import mixed
    from recis.llm.task import RelevanceTask

    task = RelevanceTask(PromptConfig(rationale=False), LevelsConfig(names=["0", "1", "2"]))
    exs = [Example("q", "t", label) for label in (0, 1, 2)]
    samples = [["0", "0", "0"], ["1", "2", "x"], ["0", "1", "1"]]  # all right, mixed, all wrong
    assert mixed(exs, samples, task) == [exs[1]]


def test_rule_advantages_for_two_context_groups_with_the_difficulty_filter():
    from recis.llm.advantages import GroupRules, rule_advantages

    # query 1 (mixed): without context 0/2 right, with 2/2 -> gap +1; query 2: all wrong
    correct = torch.tensor([0, 0, 1, 1, 0, 0, 0, 0]).bool()
    rewards = correct.float()
    rules = GroupRules(
        group=4, dual_context=True, alpha=0.5, min_scale=0.2, dynamic_sampling="drop"
    )
    adv, w, gap = rule_advantages(rewards, correct, rules, scale=False)
    assert gap.tolist() == [1.0, 0.0]
    assert w.tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    # each half's rewards are uniform, so the within-group advantages are 0 in both halves
    assert adv.tolist() == [0.0] * 8
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.5, 0, 0, 0, 0])  # shaped rewards within halves
    adv, _, _ = rule_advantages(rewards, correct, rules, scale=False)
    # half 1: (+0.5, -0.5) x (1 - 0.5 * 1) ; half 2: (+0.25, -0.25) x (1 + 0.5 * 1)
    assert torch.allclose(adv, torch.tensor([0.25, -0.25, 0.375, -0.375, 0, 0, 0, 0]))
