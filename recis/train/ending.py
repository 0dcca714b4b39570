"""The end of a training run: the last checkpoint, the best model restored, ``final`` and
``best`` linked, the final evaluation, and error messages that say where the model is.

Which checkpoint holds what is decided here, for one process and for a sharded run alike;
how checkpoints are written and linked is the trainer's checkpointer's business.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Protocol

from recis.errors import CheckpointError, RecisError

from .callbacks import EarlyStopping
from .checkpoint import saved_step
from .checkpointer import Checkpointer, is_rank0
from .signals import StopSignals


class EndingTrainer(Protocol):
    """What :class:`RunEnd` uses of the trainer."""

    step: int
    should_stop: bool
    last_saved: int
    final_path: Path | None
    eval_data: Any
    early_stopping: EarlyStopping | None
    checkpointer: Checkpointer | None
    signals: StopSignals

    def save(self, name: str | None = None) -> Path | None: ...

    def evaluate(self, data: Any = None, split: str = "eval") -> dict[str, float | None]: ...

    def load_weights(self, path: str | Path) -> dict[str, Any]: ...


class RunEnd:
    """The end-of-run part of a :class:`~recis.train.Trainer` (``trainer.end``)."""

    def __init__(self, trainer: EndingTrainer) -> None:
        self.trainer = trainer

    def path(self, step: int, name: str | None = None) -> Path | None:
        """Where checkpoint ``name`` (default: the numbered one of ``step``) is (None: no run
        directory)."""
        ckpt = self.trainer.checkpointer
        return ckpt.path(step, name) if ckpt is not None else None

    def link(self, source: Path, name: str) -> Path | None:
        ckpt = self.trainer.checkpointer
        return ckpt.link(source, name) if ckpt is not None else None

    def finish(self, result: dict[str, Any], evaluated_at: int, signalled: bool) -> dict[str, Any]:
        """After the loop: checkpoint first, then (unless stopped by a signal) restore the best
        checkpoint if asked, link ``final``, and evaluate."""
        t = self.trainer
        if signalled:
            path = t.save() or self.path(t.step)
            name = t.signals.name()
            return {**result, "stopped": name, "checkpoint": str(path) if path else None}
        t.save()
        final, restored = self._restore_best(self.path(t.step))
        if final is not None:
            try:
                t.final_path = self.link(final, "final")
            except RecisError as err:
                t.final_path = final  # the end state is saved there all the same
                self.say_where_the_model_is(err)
                raise
        if t.eval_data is not None and (evaluated_at != t.step or restored):
            try:
                # a restored best is evaluated as "best": the eval history keeps what was seen
                result = t.evaluate(split="best" if restored else "eval")
            except BaseException as err:
                self.say_where_the_model_is(err)
                raise
        if t.should_stop:
            result = {**result, "stopped": "early_stopping"}
        es = t.early_stopping
        if es is not None and es.best_step is not None:
            result = {**result, "best_step": es.best_step, "best_epoch": es.best_epoch}
        return result

    def _restore_best(self, final: Path | None) -> tuple[Path | None, bool]:
        """With ``restore_best``, the best evaluation's weights loaded: (the checkpoint that
        becomes ``final``, whether it is another step's)."""
        t, es = self.trainer, self.trainer.early_stopping
        if (
            es is None
            or not es.config.restore_best
            or es.best_step is None
            or es.best_step == t.step
        ):
            return final, False
        best = self.best_path(es.best_step)
        if best is None:
            raise CheckpointError(
                f"no checkpoint holds the best evaluation's model (step {es.best_step}: "
                f"neither checkpoints/best nor step-{es.best_step:08d}); the model of step "
                f"{t.step} is in {self.path(t.step)}"
            )
        t.load_weights(best)
        return best, True

    def say_where_the_last_checkpoint_is(self, err: BaseException) -> None:
        """A RecisError that stops training mid-run names the checkpoint to resume from."""
        t = self.trainer
        if (
            not isinstance(err, RecisError)
            or t.final_path is not None  # after training: the message names the model
            or t.last_saved < 0
            or not is_rank0()
            or not err.args
        ):
            return
        path = self.path(t.last_saved)
        if path is not None and path.is_dir() and "saved in" not in str(err.args[0]):
            err.args = (f"{err.args[0]} (last checkpoint: {path})", *err.args[1:])

    def say_where_the_model_is(self, err: BaseException) -> None:
        """Add the trained model's place to a failure after training (a RecisError's one-line
        message; any other error also gets a line on stderr)."""
        where = self.trainer.final_path
        if where is None or not is_rank0():
            return
        note = f"the trained model is saved in {where}"
        if isinstance(err, RecisError) and err.args:
            err.args = (f"{err.args[0]} ({note})", *err.args[1:])
        else:
            print(f"recis: training finished but failed afterwards; {note}", file=sys.stderr)

    def evaluate_and_keep_best(self) -> dict[str, float | None]:
        """Evaluate; with ``restore_best``, a new best is checkpointed and linked as ``best``."""
        t = self.trainer
        result = t.evaluate()
        es = t.early_stopping
        if es is not None and es.config.restore_best and es.improved:
            t.save()
            path = self.path(t.step)
            if path is not None:
                self.link(path, "best")
        return result

    def best_path(self, step: int) -> Path | None:
        """The checkpoint holding step ``step``'s model: ``best`` when it does, else the
        numbered one (a kill between a save and the ``best`` link, or a resume from an
        older checkpoint, leaves ``best`` behind or set aside); None when neither does."""
        for name in ("best", None):
            path = self.path(step, name=name)
            if path is not None and path.is_dir() and saved_step(path) == step:
                return path
        return None

    def relink_best(self) -> None:
        """After a resume: ``best`` is made to hold the early-stopping state's best step
        again while its numbered checkpoint is still there (``keep_last`` may drop it)."""
        es = self.trainer.early_stopping
        if es is None or not es.config.restore_best or es.best_step is None:
            return
        path = self.best_path(es.best_step)
        if path is not None and path.name != "best":
            self.link(path, "best")
