"""Reward functions in trl's form ``f(prompts, completions, **columns) -> list[float]``.

- :func:`label_reward` (TaoSR1's verifiable reward): 1 when the completion's level equals the
  label, else 0. Always the first reward: the group rules read correctness from it.
- :func:`rule_reward` (TaoSR-AGRL's rule-aware shaping, our reading): the share of the
  rationale's steps that match what their rule says for this (query, item); the ``steps``
  column holds the rule-written rationale. A completion without a parseable level earns 0.
- :class:`StepReward` (TaoSR-SHE): per step, a blend of the generative step reward model's
  probability that the step is right and the offline verifier's verdict (the rule checker),
  averaged over the steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from recis.llm.rationale import Rationale, check_steps, parse_steps
from recis.llm.task import RelevanceTask

RewardFn = Callable[..., list[float]]


def label_reward(task: RelevanceTask) -> RewardFn:
    """1.0 for the right level, 0.0 otherwise (``label`` column)."""

    def label(prompts: list, completions: list[str], label: list[int], **_: Any) -> list[float]:
        return [float(task.parse_level(c) == y) for c, y in zip(completions, label)]

    return label


def _expected(steps_text: str) -> Rationale:
    return Rationale(tuple(parse_steps(steps_text).items()))


def rule_reward(task: RelevanceTask) -> RewardFn:
    """Share of correct rationale steps (``steps`` column: the rule-written rationale)."""

    def rules(prompts: list, completions: list[str], steps: list[str], **_: Any) -> list[float]:
        out = []
        for c, s in zip(completions, steps):
            expected = _expected(s)
            if task.parse_level(c) is None or not expected.steps:
                out.append(0.0)
                continue
            checks = check_steps(task.steps_text(c), expected)
            out.append(sum(x.ok for x in checks) / len(checks))
        return out

    return rules


class StepScorer(Protocol):
    """Probability that each ``(prompt, step)`` is right (a step reward model)."""

    def __call__(self, prompts: list[str], steps: list[str]) -> list[float]: ...


class StepReward:
    """TaoSR-SHE's step reward: mean over expected steps of
    ``(1 - verifier_weight) * P_rm(step right) + verifier_weight * [verifier says right]``;
    a step the completion does not state earns 0 (``steps`` column: the rule rationale).

    Args:
        task: parses completions.
        scorer: the generative step reward model.
        verifier_weight: weight of the offline verifier (the rule checker).
    """

    __name__ = "steps"

    def __init__(self, task: RelevanceTask, scorer: StepScorer, verifier_weight: float) -> None:
        self.task = task
        self.scorer = scorer
        self.verifier_weight = verifier_weight

    def __call__(
        self, prompts: list[str], completions: list[str], steps: list[str], **_: Any
    ) -> list[float]:
        rows: list[tuple[int, str, str, bool]] = []  # (completion, prompt, claimed step, ok)
        totals = [0.0] * len(completions)
        counts = [0] * len(completions)
        for i, (p, c, s) in enumerate(zip(prompts, completions, steps)):
            expected = _expected(s)
            counts[i] = len(expected.steps)
            if self.task.parse_level(c) is None:
                continue
            for chk in check_steps(self.task.steps_text(c), expected):
                if chk.claimed is not None:
                    rows.append((i, p, f"{chk.name}={chk.claimed}", chk.ok))
        if rows:
            probs = self.scorer([r[1] for r in rows], [r[2] for r in rows])
            v = self.verifier_weight
            for row, prob in zip(rows, probs):
                totals[row[0]] += (1 - v) * prob + v * float(row[3])
        return [t / n if n else 0.0 for t, n in zip(totals, counts)]
