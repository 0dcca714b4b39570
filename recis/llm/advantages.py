"""The GRPO variants' math, as short functions over one generation batch.

Rollouts arrive grouped: ``N = Q * G`` completions, the ``G`` of query ``q`` at rows
``q*G .. q*G+G-1`` (trl's ``RepeatSampler`` order). ``rewards [N]`` is the total reward,
``correct [N]`` whether the completion's level equals the label.

- :func:`group_advantages`: GRPO's ``(r - mean_group) / (std_group + eps)`` (unbiased std, as
  trl computes it).
- :func:`difficulty_weights`: TaoSR1's difficulty-based dynamic sampling: a group whose
  rollouts are all right or all wrong carries no signal; ``drop`` gives it weight 0 (it leaves
  the loss and its normaliser), ``downweight`` a small weight, ``none`` 1.
- :func:`intergroup_scales`: DyKnow-RAG's posterior-driven inter-group advantage scaling (our
  reading): each query's ``G`` rollouts are two groups, the first ``G/2`` without the context
  chunk and the last ``G/2`` with it; with ``gap = acc_with - acc_without`` the with-context
  group's advantages are scaled by ``max(min_scale, 1 + alpha * gap)`` and the without-context
  group's by ``max(min_scale, 1 - alpha * gap)``: a chunk that helps makes the model learn more
  from the rollouts that read it, a chunk that misleads more from those that did without.
- :func:`replay_slots`: TaoSR-AGRL's adaptive guided replay: in each group whose accuracy is
  below ``below``, the first wrong rollout is the slot the ground-truth completion replaces.
- :func:`rule_advantages`: all of the above for one batch, as :class:`GroupRules` say (what the
  trainer, recis.llm.grpo, puts in place of trl's advantages).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

EPS = 1e-4


def _grouped(x: torch.Tensor, group: int) -> torch.Tensor:
    if x.numel() % group:
        raise ValueError(f"{x.numel()} rollouts do not split into groups of {group}")
    return x.reshape(-1, group)


def group_advantages(rewards: torch.Tensor, group: int, scale: bool = True) -> torch.Tensor:
    """``[N]`` advantages: reward minus its group's mean, over the group's std when ``scale``."""
    r = _grouped(rewards.float(), group)
    adv = r - r.mean(1, keepdim=True)
    if scale:
        adv = adv / (r.std(1, keepdim=True) + EPS)
    return adv.reshape(-1)


def difficulty_weights(
    correct: torch.Tensor,
    group: int,
    mode: Literal["drop", "downweight", "none"] = "drop",
    downweight: float = 0.1,
) -> torch.Tensor:
    """``[N]`` loss weights: 1 for rollouts of a mixed group; for a group all right or all
    wrong, 0 (``drop``), ``downweight`` (``downweight``) or 1 (``none``)."""
    c = _grouped(correct.float(), group)
    uniform = (c.min(1).values == c.max(1).values)[:, None].expand_as(c)
    low = {"drop": 0.0, "downweight": downweight, "none": 1.0}[mode]
    return torch.where(uniform, torch.full_like(c, low), torch.ones_like(c)).reshape(-1)


def intergroup_scales(
    correct: torch.Tensor, group: int, alpha: float = 1.0, min_scale: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """DyKnow-RAG scaling for groups of ``group`` rollouts (first half without context).

    Returns ``(scales [N], gap [Q])``: each rollout's advantage multiplier and each query's
    correctness gap ``acc_with - acc_without``."""
    if group % 2:
        raise ValueError(f"group size {group} is odd: two equal halves are needed")
    c = _grouped(correct.float(), group)
    half = group // 2
    gap = c[:, half:].mean(1) - c[:, :half].mean(1)  # [Q]
    s_with = (1 + alpha * gap).clamp_min(min_scale)
    s_without = (1 - alpha * gap).clamp_min(min_scale)
    scales = torch.cat([s_without[:, None].expand(-1, half), s_with[:, None].expand(-1, half)], 1)
    return scales.reshape(-1), gap


def dual_group_advantages(rewards: torch.Tensor, group: int, scale: bool = True) -> torch.Tensor:
    """GRPO advantages within each half of every group (the two DyKnow-RAG groups)."""
    return group_advantages(rewards, group // 2, scale)


def replay_slots(correct: torch.Tensor, group: int, below: float) -> list[int]:
    """Rows (into ``[N]``) whose rollout the ground truth replaces: the first wrong rollout of
    each group with accuracy below ``below``."""
    c = _grouped(correct.bool(), group)
    out = []
    for q in range(c.shape[0]):
        if c[q].float().mean().item() < below and not c[q].all():
            out.append(q * group + int((~c[q]).nonzero()[0, 0]))
    return out


@dataclass(frozen=True)
class GroupRules:
    """What the GRPO trainer does to each rollout group.

    Args:
        group: rollouts per query (trl's ``num_generations``).
        dynamic_sampling: difficulty filter mode (see difficulty_weights).
        downweight: the weight of an all-right / all-wrong group under ``downweight``.
        dual_context: DyKnow-RAG: two half groups, the second with the context chunk.
        alpha, min_scale: DyKnow-RAG's inter-group scaling.
        replay_below: TaoSR-AGRL: groups below this accuracy get the ground truth (None: off).
    """

    group: int
    dynamic_sampling: Literal["drop", "downweight", "none"] = "drop"
    downweight: float = 0.1
    dual_context: bool = False
    alpha: float = 1.0
    min_scale: float = 0.2
    replay_below: float | None = None


def rule_advantages(
    rewards: torch.Tensor, correct: torch.Tensor, rules: GroupRules, scale: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The advantages ``[N]`` (zero for a dropped group), the loss weights ``[N]`` of the
    difficulty filter and DyKnow-RAG's per-query gap ``[Q]`` (None without two groups)."""
    g, gap = rules.group, None
    if rules.dual_context:
        adv = dual_group_advantages(rewards, g, scale)
        scales, gap = intergroup_scales(correct, g, rules.alpha, rules.min_scale)
        adv = adv * scales
    else:
        adv = group_advantages(rewards, g, scale)
    w = difficulty_weights(correct, g, rules.dynamic_sampling, rules.downweight)
    return adv * (w > 0), w, gap
