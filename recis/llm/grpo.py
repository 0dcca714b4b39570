"""One GRPO trainer for TaoSR1, TaoSR-AGRL, TaoSR-SHE and DyKnow-RAG: trl's GRPOTrainer with
the rollout-group rules of :mod:`recis.llm.advantages` (trl keeps generation, log-probs and the
clipped loss; nothing here generates by hand).

Hooks into trl (1.16), each a short override:

- ``_generate_and_score_completions``: for DyKnow-RAG, the second half of every group is given
  the prompt with the context chunk (``prompt_context`` column) before trl generates; after trl
  scored the batch, the advantages are recomputed from the rewards trl computed (captured in
  ``_calculate_rewards``) with the group rules, and dropped groups leave the loss mask and the
  loss normaliser (``num_items_in_batch``, trl's ``dapo`` loss).
- ``_generate``: TaoSR-AGRL's guided replay swaps the ground-truth completion (``gold`` column)
  into low-accuracy groups before trl decodes, rewards and scores them, so the replayed rollout
  goes through the same reward and loss as a sampled one.

The first reward function must be the label reward (1 for the right level, else 0): it defines
correctness for the group rules.
"""

from __future__ import annotations

from typing import Any

import torch
from trl import GRPOTrainer

from recis.llm.advantages import GroupRules, replay_slots, rule_advantages
from recis.llm.task import RelevanceTask


class RelevanceGRPOTrainer(GRPOTrainer):
    """trl's GRPOTrainer with :class:`GroupRules` (dataset columns: ``prompt``, ``label``,
    ``gold``; ``uid`` and ``prompt_context`` for DyKnow-RAG)."""

    def __init__(self, *args: Any, rules: GroupRules, task: RelevanceTask, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rules = rules
        self.task = task
        self._batch_inputs: list[dict[str, Any]] = []
        self._last_rewards: torch.Tensor | None = None

    def _training(self) -> bool:
        return self.model is not None and self.model.training

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):  # noqa: ANN001, ANN202
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards = rewards
        return rewards

    def _generate_and_score_completions(self, inputs):  # noqa: ANN001, ANN202
        g = self.rules.group
        if self.rules.dual_context:
            for q in range(0, len(inputs), g):
                if len({x["uid"] for x in inputs[q : q + g]}) != 1:
                    raise RuntimeError("a rollout group mixes queries: trl's sampler order changed")
            inputs = [
                {**x, "prompt": x["prompt_context"]} if i % g >= g // 2 else x
                for i, x in enumerate(inputs)
            ]
        self._batch_inputs = inputs
        out = super()._generate_and_score_completions(inputs)
        assert self._last_rewards is not None
        self._apply_rules(out, self._last_rewards)
        return out

    def _apply_rules(self, out: dict[str, Any], per_func: torch.Tensor) -> None:
        """Replace trl's advantages, loss mask and token normaliser by the group rules'
        (single process: the whole generation batch is local)."""
        g, mode = self.rules.group, "train" if self._training() else "eval"
        rewards = torch.nan_to_num(per_func, nan=0.0) @ self.reward_weights.to(per_func.device)
        correct = torch.nan_to_num(per_func[:, 0], nan=0.0) > 0.5
        adv, w, gap = rule_advantages(rewards, correct, self.rules, self.scale_rewards != "none")
        keep = (w > 0).long().to(out["completion_mask"].device)
        out["completion_mask"] = out["completion_mask"] * keep[:, None]
        out["advantages"] = adv.to(out["completion_mask"].device)
        tokens = (out["completion_mask"].sum(1).float() * w.to(keep.device)).sum()
        out["num_items_in_batch"] = tokens.clamp_min(1.0).to(out["num_items_in_batch"].dtype)
        self._metrics[mode]["groups/kept"].append(
            (w.reshape(-1, g)[:, 0] == 1).float().mean().item()
        )
        if gap is not None:
            c = correct.float().reshape(-1, g)
            self._metrics[mode]["dyknow/acc_without_context"].append(c[:, : g // 2].mean().item())
            self._metrics[mode]["dyknow/acc_with_context"].append(c[:, g // 2 :].mean().item())
            self._metrics[mode]["dyknow/gap"].append(gap.mean().item())

    def _generate(self, prompts: list):  # noqa: ANN202
        result = list(super()._generate(prompts))
        below = self.rules.replay_below
        if below is None or not self._training():
            return tuple(result)
        completion_ids, completions = result[1], result[3]
        labels = [x["label"] for x in self._batch_inputs]
        correct = torch.tensor(
            [self.task.parse_level(c) == lab for c, lab in zip(completions, labels)]
        )
        slots = replay_slots(correct, self.rules.group, below)
        tok: Any = self.processing_class  # a tokenizer: the prompts are text
        for i in slots:
            gold = self._batch_inputs[i]["gold"]
            ids = tok.encode(gold, add_special_tokens=False) + [tok.eos_token_id]
            completion_ids[i] = ids[: self.max_completion_length]
            completions[i] = gold
        self._metrics["train"]["agrl/replayed"].append(len(slots) / max(len(correct), 1))
        return tuple(result)
