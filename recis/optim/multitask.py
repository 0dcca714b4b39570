"""Multi-task objectives: per-task losses -> one scalar to descend.

:class:`WeightedSumObjective` is ``sum_t w_t L_t`` with fixed weights.

:class:`PriorityObjective` follows "No More Tuning: Prioritized Multi-Task
Learning with Lagrangian Differential Multiplier Methods" (AAAI 2025,
arXiv 2412.12092). Tasks carry priorities (0 = most important). Priority
levels join training one stage at a time (``stage_steps`` optimizer steps
each): level 0 trains alone, so its tracked loss reaches the level it gets
on its own; when level ``l`` joins, every task ``j`` of a higher priority
gets a constraint ``L_j <= eps_j`` with

    eps_j = (1 + tolerance_j) * ref_j,
    ref_j = min over steps since then of the tracked loss of j,

the tracked loss being a bias-corrected EMA of ``j``'s training loss (so
the reference starts at what ``j`` reached without the lower tasks, and
follows ``j`` down if it improves further). The primal step descends the
Lagrangian

    L = sum_{active k} L_k + sum_{constrained j} lambda_j (L_j - eps_j)

with a damped multiplier in the primal step (Platt and Barr's modified
differential method of multipliers): the coefficient the primal step puts
on ``L_j`` is ``1 + max(0, lambda_j + damping * v_j(L_j on this batch))``, a
proportional response without the tracker's lag. After each optimizer step
the multipliers move by projected gradient ascent on the tracked violation:

    lambda_j <- max(0, lambda_j + multiplier_lr * v_j(Lbar_j)),
    v_j(x) = (x - eps_j) / (max(tolerance_j, MIN_BAND) * ref_j),

the violation measured in units of the tolerance band (our choice: it makes
one rate react within tens of steps whatever the loss scale and tolerance),
so a multiplier grows while its constraint is violated and decays back to
zero once the constraint has slack. No per-task weight is tuned.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from recis.config import PriorityConfig, TaskConfig, TrainConfig
from recis.errors import ConfigError

# smallest tolerance band the violation is measured in (relative): tolerance 0 stays finite
MIN_BAND = 0.01


def task_loss(kind: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean loss of one task. Shapes: ``logits`` and ``labels`` ``[B]``; float32 math."""
    logits = logits.float()
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, labels)
    return F.mse_loss(logits, labels)


class WeightedSumObjective:
    """``sum_t weight_t * L_t``; tasks missing from ``weights`` get weight 1."""

    def __init__(self, weights: dict[str, float] | None = None) -> None:
        self.weights = dict(weights or {})

    def __call__(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        # sum() is typed with its int start (0); over tensors the result is a tensor
        return sum(self.weights.get(t, 1.0) * v for t, v in losses.items())  # type: ignore[return-value]  # see above

    def update(self, losses: dict[str, float]) -> None:
        """Nothing adapts: fixed weights."""

    def log(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class PriorityObjective:
    """Lagrangian differential multipliers over task priorities (see the module docstring).

    Args:
        tasks: the tasks with ``priority`` (0 first) and ``tolerance``.
        config: stage length, multiplier learning rate, EMA factor.

    Example::

        obj = PriorityObjective([TaskConfig("click", priority=0),
                                 TaskConfig("buy", priority=1)], PriorityConfig())
        loss = obj(losses)      # {task: scalar tensor} -> scalar; backward on it
        opt.step(); obj.update({t: v.item() for t, v in losses.items()})
    """

    def __init__(self, tasks: list[TaskConfig], config: PriorityConfig) -> None:
        if not tasks:
            raise ConfigError("train.tasks: objective 'priority' needs the tasks listed")
        self.tasks = {t.name: t for t in tasks}
        self.config = config
        self.levels = sorted({t.priority for t in tasks})
        self.step = 0
        self.ema: dict[str, float] = {t: 0.0 for t in self.tasks}
        self.ema_n = 0
        self.ref: dict[str, float] = {}
        # one multiplier per task that has a lower-priority task below it
        self.lam: dict[str, float] = {t.name: 0.0 for t in tasks if t.priority < self.levels[-1]}

    def active_level(self) -> int:
        """Index into ``levels`` of the lowest-priority level training at this step."""
        if self.config.stage_steps == 0:
            return len(self.levels) - 1
        return min(self.step // self.config.stage_steps, len(self.levels) - 1)

    def _level(self, task: str) -> int:
        return self.levels.index(self.tasks[task].priority)

    def constrained(self) -> list[str]:
        """Tasks whose constraint is live: a lower-priority level is training."""
        top = self.active_level()
        return [t for t in self.lam if self._level(t) < top and t in self.ref]

    def eps(self, task: str) -> float:
        return (1.0 + self.tasks[task].tolerance) * self.ref[task]

    def violation(self, task: str, loss: float) -> float:
        """``(loss - eps) / (band * ref)``: the violation in units of the tolerance band.

        ``band = max(tolerance, MIN_BAND)``. Measured this way a loss halfway
        through the band above ``eps`` reads 0.5 whatever the task's loss scale
        or tolerance, so one ``multiplier_lr`` / ``damping`` reacts within tens
        of steps for 1% and 10% tolerances alike (dividing by ``eps`` alone made
        a 1%-of-the-loss violation move the multiplier by 1% of the rate).
        """
        band = max(self.tasks[task].tolerance, MIN_BAND) * self.ref[task]
        return (loss - self.eps(task)) / band

    def __call__(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """The Lagrangian's task-dependent part (constants ``-lambda eps`` add no gradient)."""
        top = self.active_level()
        live = set(self.constrained())
        total = None
        for t, v in losses.items():
            if t not in self.tasks:
                raise ConfigError(f"train.tasks: model output {t!r} is not a listed task")
            if self._level(t) > top:
                continue  # its stage has not started
            coef = 1.0
            if t in live:
                # damped multiplier (Platt & Barr): lambda + damping * violation of this batch,
                # a proportional response without the tracker's lag
                g = self.violation(t, float(v.detach()))
                coef += max(0.0, self.lam[t] + self.config.damping * g)
            total = coef * v if total is None else total + coef * v
        assert total is not None
        return total

    def tracked(self, task: str) -> float:
        """Bias-corrected EMA of ``task``'s training loss."""
        return self.ema[task] / (1.0 - self.config.ema**self.ema_n)

    def update(self, losses: dict[str, float]) -> None:
        """After an optimizer step: track losses, set references, move the multipliers."""
        beta = self.config.ema
        self.ema_n += 1
        for t, v in losses.items():
            self.ema[t] = beta * self.ema[t] + (1.0 - beta) * float(v)
        self.step += 1
        top = self.active_level()
        for t in self.lam:
            if self._level(t) >= top:
                continue
            cur = self.tracked(t)
            # the reference starts where the task got without lower tasks, then ratchets down
            self.ref[t] = cur if t not in self.ref else min(self.ref[t], cur)
        for t in self.constrained():
            step = self.config.multiplier_lr * self.violation(t, self.tracked(t))
            self.lam[t] = max(0.0, self.lam[t] + step)

    def log(self) -> dict[str, float]:
        """``lambda/<t>``, ``slack/<t>`` (``eps - tracked``; < 0 violated), ``eps/<t>``."""
        out: dict[str, float] = {f"lambda/{t}": v for t, v in self.lam.items()}
        for t in self.lam:
            if t in self.ref:
                out[f"eps/{t}"] = self.eps(t)
                out[f"slack/{t}"] = self.eps(t) - self.tracked(t)
            else:
                out[f"slack/{t}"] = math.nan
        out["stage"] = float(self.active_level())
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "ema": dict(self.ema),
            "ema_n": self.ema_n,
            "ref": dict(self.ref),
            "lambda": dict(self.lam),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.ema = dict(state["ema"])
        self.ema_n = int(state["ema_n"])
        self.ref = dict(state["ref"])
        self.lam = dict(state["lambda"])


Objective = WeightedSumObjective | PriorityObjective


def resolve_tasks(config: TrainConfig, outputs: list[str]) -> list[TaskConfig]:
    """The configured tasks, or one BCE task per model output when none are listed."""
    if not config.tasks:
        return [TaskConfig(name=t) for t in outputs]
    names = [t.name for t in config.tasks]
    missing = [n for n in names if n not in outputs]
    if missing:
        raise ConfigError(
            f"train.tasks: {missing} not produced by the model (it outputs {outputs})"
        )
    return list(config.tasks)


def build_objective(config: TrainConfig, tasks: list[TaskConfig]) -> Objective:
    """The objective named by ``config.objective`` over ``tasks``."""
    if config.objective == "priority":
        return PriorityObjective(tasks, config.priority)
    return WeightedSumObjective({t.name: t.weight for t in tasks})
