"""Training callbacks: hooks the trainer calls, and early stopping."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from recis.config import EarlyStoppingConfig
from recis.errors import ConfigError


class TrainerView(Protocol):
    """What a callback sees of the trainer calling it (:class:`recis.train.Trainer` is one):
    its progress, and ``should_stop`` to ask it to stop after this step."""

    step: int  # optimizer steps taken
    epoch: int  # epochs completed
    should_stop: bool


class Callback:
    """Override any hook. ``record`` / ``result`` are the dicts the trainer logs.

    A callback that keeps state across steps returns it from :meth:`state_dict`
    so it is checkpointed with the trainer.
    """

    def on_train_start(self, trainer: TrainerView) -> None: ...

    def on_step_end(self, trainer: TrainerView, record: dict[str, Any]) -> None: ...

    def on_eval(self, trainer: TrainerView, result: dict[str, float | None]) -> None: ...

    def on_checkpoint(self, trainer: TrainerView, path: Path) -> None: ...

    def on_train_end(self, trainer: TrainerView, result: dict[str, Any]) -> None: ...

    def on_log(self, trainer: TrainerView, record: dict[str, Any]) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class FunctionCallback(Callback):
    """A plain ``fn(record)`` called with every logged record (train and eval)."""

    def __init__(self, fn: Callable[[dict[str, Any]], None]) -> None:
        self.fn = fn

    def on_log(self, trainer: TrainerView, record: dict[str, Any]) -> None:
        self.fn(record)


class EarlyStopping(Callback):
    """Asks the trainer to stop when ``metric`` has not improved for ``patience`` evaluations.

    Remembers the best evaluation (``best``, ``best_step``, ``best_epoch``); ``improved`` says
    whether the last evaluation was a new best (the trainer then keeps its checkpoint as
    ``best`` when ``restore_best`` is set).
    """

    def __init__(self, config: EarlyStoppingConfig) -> None:
        self.config = config
        self.best: float | None = None
        self.best_step: int | None = None
        self.best_epoch: int | None = None
        self.bad = 0
        self.improved = False

    def on_eval(self, trainer: TrainerView, result: dict[str, float | None]) -> None:
        cfg = self.config
        self.improved = False
        if cfg.metric not in result:
            raise ConfigError(
                f"train.early_stopping.metric: {cfg.metric!r} not in eval results {sorted(result)}"
            )
        value = result[cfg.metric]
        if not isinstance(value, int | float) or math.isnan(value):
            return
        better = (
            self.best is None
            or (cfg.mode == "max" and value > self.best + cfg.min_delta)
            or (cfg.mode == "min" and value < self.best - cfg.min_delta)
        )
        if better:
            self.best, self.bad, self.improved = float(value), 0, True
            self.best_step, self.best_epoch = trainer.step, trainer.epoch
        else:
            self.bad += 1
            if self.bad >= cfg.patience:
                trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "bad": self.bad,
            "best_step": self.best_step,
            "best_epoch": self.best_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad = state["best"], state["bad"]
        self.best_step = state.get("best_step")
        self.best_epoch = state.get("best_epoch")


def as_callbacks(items: list[Callback | Callable[[dict[str, Any]], None]] | None) -> list[Callback]:
    return [c if isinstance(c, Callback) else FunctionCallback(c) for c in items or []]
