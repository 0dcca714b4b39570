"""The training loop: train and evaluate interleaved, log, checkpoint, resume exactly.

One loop for one process and for every rank of a distributed run: what differs (reductions,
which rank logs, sharded checkpoints, even batch counts) is the trainer's
:class:`~recis.train.context.TrainContext`; reading batches (and the next one ahead) is its
:class:`~recis.train.pipeline.TrainPipeline`.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from recis.config import TaskConfig, TrainConfig
from recis.errors import ConfigError
from recis.io.batch import Batch
from recis.optim import (
    build_objective,
    build_schedule,
    dense_optimizer,
    resolve_tasks,
    sparse_optimizer,
    split_parameters,
    task_loss,
)

from . import evaluation
from .callbacks import Callback, EarlyStopping, as_callbacks
from .checkpointer import Checkpointer, is_rank0, load_trainer_state
from .context import TrainContext
from .ending import RunEnd
from .model_api import DeclaresTasks, DefinesLoss, unwrapped
from .pipeline import set_map_ahead, wants_map_ahead
from .runlog import RunLogger
from .signals import StopSignals
from .state import rng_state


@dataclass
class _Progress:
    """The loop's running figures within one ``fit``."""

    result: dict[str, Any]
    evaluated_at: int = -1
    samples: int = 0
    t0: float = 0.0
    ema: float | None = None


class Trainer:
    """Trains a model whose ``forward(batch)`` returns ``{task: logits [B]}``.

    Each task's loss (BCE or MSE against ``batch.labels[task]``) goes into the
    multi-task objective (``weighted_sum`` or ``priority``, see
    :mod:`recis.optim.multitask`); the dense parameters step through a torch
    optimizer with a learning-rate schedule, torchrec embedding-collection
    weights through the sparse optimizer, and parameters the embedding engine
    updates inside backward are left to it.

    Args:
        model: the model (already on ``device``).
        train_data: an iterable of :class:`~recis.io.Batch`, re-iterated each
            epoch; a reader's position is checkpointed (exact resume).
        eval_data: an iterable of batches for evaluation, or None.
        config: training options.
        run_dir: where metrics.jsonl, tb/ and checkpoints/ go (None: write nothing).
        device: where batches are moved (the context's device when ``context`` is given).
        callbacks: :class:`~recis.train.callbacks.Callback` objects, or plain
            ``fn(record)`` called with every logged record.
        context: the processes this trainer runs in (default: this one process);
            :class:`recis.distributed.trainer.DistributedTrainContext` for a rank of a sharded run.

    Example::

        trainer = Trainer(model, train_reader, eval_reader, TrainConfig(max_steps=1000))
        result = trainer.fit()  # {"click/auc": ..., "click/logloss": ...}
    """

    def __init__(
        self,
        model: nn.Module,
        train_data: Iterable[Batch],
        eval_data: Iterable[Batch] | None,
        config: TrainConfig,
        run_dir: str | Path | None = None,
        device: torch.device | str = "cpu",
        callbacks: list[Callback | Callable[[dict[str, Any]], None]] | None = None,
        context: TrainContext | None = None,
    ) -> None:
        self.context = context if context is not None else TrainContext(device)
        config = self.context.train_config(config)
        self.model = model
        self.train_data = train_data
        self.eval_data = eval_data
        self.config = config
        self.device = self.context.device
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.callbacks = as_callbacks(callbacks)
        self.early_stopping = self._early_stopping()
        set_map_ahead(model, wants_map_ahead(config.map_ahead, self.device))
        self.pipeline = self.context.pipeline(train_data, model)
        built = self.context.optimizers(model, config)
        if built is None:  # one process: torch optimizers over the dense and sparse split
            sparse, dense = split_parameters(model)
            self.dense_params = dense
            self.dense_optimizer = dense_optimizer(dense, config.dense_optimizer)
            self.optimizers = [self.dense_optimizer]
            if sparse:
                self.optimizers.append(sparse_optimizer(sparse, config.sparse_optimizer))
        else:
            self.optimizers, self.dense_optimizer = built.all, built.dense
            self.dense_params = built.dense_params
        self.scheduler = build_schedule(self.dense_optimizer, config.schedule, config.max_steps)
        self.tasks: list[TaskConfig] | None = None
        self.objective: Any = None
        self._pending_objective: dict[str, Any] | None = None
        inner = unwrapped(model)
        # known up front: finding them by a forward on one rank would desync a sharded run
        outputs = inner.tasks if isinstance(inner, DeclaresTasks) else None
        if config.tasks or outputs:
            self._set_tasks(list(outputs or [t.name for t in config.tasks]))
        self.logger = RunLogger(run_dir, tensorboard=config.tensorboard)
        self.checkpointer = (
            self.context.checkpointer(self.run_dir, config) if self.run_dir is not None else None
        )
        self.step = 0  # optimizer steps taken
        self.epoch = 0  # completed epochs
        self.should_stop = False
        self._micro = 0
        self._acc: np.ndarray | None = None
        self.signals = StopSignals()
        self._stop_agreed = False  # every rank saw a stop signal (one process: this one)
        self.last_saved = -1  # the step of the last numbered checkpoint written or loaded
        self.end = RunEnd(self)
        self.final_path: Path | None = None  # checkpoints/final once fit has written it

    def _early_stopping(self) -> EarlyStopping | None:
        """``train.early_stopping`` as the last callback (None: not configured)."""
        cfg = self.config.early_stopping
        if cfg is None:
            return None
        if cfg.restore_best and (self.run_dir is None or self.eval_data is None):
            raise ConfigError(
                "train.early_stopping.restore_best: needs eval data and a run_dir "
                "(the best checkpoint is kept in run_dir/checkpoints/best)"
            )
        stopping = EarlyStopping(cfg)
        self.callbacks.append(stopping)
        return stopping

    # ---- objective -------------------------------------------------------------
    def _set_tasks(self, outputs: list[str]) -> None:
        self.tasks = resolve_tasks(self.config, outputs)
        self.objective = build_objective(self.config, self.tasks)
        if self._pending_objective:
            self.objective.load_state_dict(self._pending_objective)

    def losses(self, logits: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        """Per-task mean losses (float32 scalars)."""
        if self.tasks is None:
            self._set_tasks(list(logits))
        assert self.tasks is not None
        inner = unwrapped(self.model)
        if isinstance(inner, DefinesLoss):
            return inner.loss(logits, batch)
        return {t.name: task_loss(t.loss, logits[t.name], batch.labels[t.name]) for t in self.tasks}

    # ---- one step --------------------------------------------------------------
    def train_step(self, batch: Batch, next_batch: Batch | None = None) -> dict[str, float] | None:
        """Forward and backward on one micro-batch; an optimizer step every ``grad_accum``.

        ``next_batch``: the batch of the next call, when known. The pipeline then starts the
        model's ahead stage on it during this step (a sharded model's hashed tables send its
        ids to the ranks that hold them, which takes two collectives off the next step's
        path); :meth:`fit` does this.

        Returns the step's record (mean losses over its micro-batches, objective
        state, learning rate) after an optimizer step, None between them.
        """
        cfg = self.config
        self.model.train()
        batch = self.pipeline.prepare(batch, next_batch)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            logits = self.model(batch)
        losses = self.losses(logits, batch)
        total = self.objective(losses)
        if cfg.grad_accum > 1:
            total = total / cfg.grad_accum
        # the objective and task losses, reduced over ranks in a distributed run (started
        # before backward, so that the collective overlaps it); one device->host copy
        # the last value is this rank's stop flag (a signal was received): reduced with the
        # losses, so that every rank of a distributed run stops after the same step
        flag = torch.tensor(1.0 if self.signals.received is not None else 0.0, dtype=total.dtype)
        values = self.context.reduce_async(
            torch.stack([total.detach() * cfg.grad_accum, *losses.values(), flag.to(total.device)])
        )
        total.backward()
        reduced = values()
        if reduced.pop() > 0:
            self._stop_agreed = True
        if not np.isfinite(reduced[0]):
            raise FloatingPointError(f"step {self.step}: loss is {reduced[0]} ({reduced[1:]})")
        self._acc = np.asarray(reduced) if self._acc is None else self._acc + reduced
        self._micro += 1
        if self._micro < cfg.grad_accum:
            return None
        return self._optimizer_step(list(losses))

    def _optimizer_step(self, tasks: list[str]) -> dict[str, float]:
        """Clip, step and zero every optimizer and the schedule; the step's record."""
        assert self._acc is not None
        mean = self._acc / self._micro
        self._acc, self._micro = None, 0
        if self.config.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.dense_params, self.config.clip)
        for opt in self.optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        per_task = dict(zip(tasks, mean[1:].tolist()))
        self.objective.update(per_task)
        self.step += 1
        record = {"loss": float(mean[0]), "lr": float(lr)}
        record.update({f"loss/{t}": v for t, v in per_task.items()})
        record.update(self.objective.log())
        return record

    # ---- loop ------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train until ``epochs`` or ``max_steps``; evaluate every ``eval_every`` steps, at the
        end of every epoch with ``eval_each_epoch``, and at the end; checkpoint every
        ``checkpoint_every`` steps, on SIGINT / SIGTERM and at the end.

        The end state is saved before the final evaluation, so a failure there (a bad eval
        row) never loses the trained model: its message says where the model is. With
        ``early_stopping.restore_best`` the best evaluation's checkpoint is loaded at the end:
        ``checkpoints/final`` and the final evaluation are it.

        Returns the last evaluation (``{}`` without eval data), plus ``stopped`` ("sigint",
        "sigterm" or "early_stopping") and ``checkpoint`` (where the stopped run was saved)
        when training ended early, and ``best_step`` / ``best_epoch`` with early stopping.
        """
        if self.checkpointer is not None:
            self.checkpointer.clean_partial()
        self._stop_agreed = False  # a stop asked of an earlier fit() is done
        handlers = self.signals.install()
        try:  # a callback or tqdm failing here must not leave recis's handlers installed
            for cb in self.callbacks:
                cb.on_train_start(self)
            bar = self._progress_bar()
        except BaseException:
            self.signals.restore(handlers)
            raise
        run = _Progress(result={}, t0=time.perf_counter())
        try:
            while self.epoch < self.config.epochs and not self._done():
                self._train_epoch(run, bar)
            result = self.end.finish(run.result, run.evaluated_at, self._stop_requested())
            skipped = self.pipeline.bad_rows_report()  # the summary says so, when any were
            if skipped:
                result = {**result, "skipped_rows": sum(skipped.values())}
        except BaseException as err:
            bar.close()
            # the run log is closed on the way out of a failure, which it must not hide (a full
            # disk fails the log's last write too; TensorBoard's writer raises its own errors)
            with contextlib.suppress(Exception):
                self.logger.close()
            self.signals.restore(handlers)
            self.end.say_where_the_last_checkpoint_is(err)
            raise
        bar.close()
        try:
            self.logger.close()
        finally:
            self.signals.restore(handlers)
        for cb in self.callbacks:
            cb.on_train_end(self, result)
        return result

    def _progress_bar(self) -> tqdm:
        cfg = self.config
        total = cfg.max_steps
        per_epoch = self.pipeline.batches_per_epoch() if total is None else None
        if per_epoch is not None:
            total = cfg.epochs * per_epoch // cfg.grad_accum
        return tqdm(
            total=total,
            initial=self.step,
            disable=not cfg.progress,
            unit="step",
            dynamic_ncols=True,
            mininterval=0.5 if sys.stderr.isatty() else 10.0,
        )

    def _train_epoch(self, run: _Progress, bar: tqdm) -> None:
        """Train on the pipeline's batches until the epoch ends or the run is done."""
        batches = self.pipeline.epoch()
        for batch, upcoming in batches:
            record = self.train_step(batch, upcoming)
            run.samples += batch.batch_size
            if record is None:
                continue
            self._after_step(record, run, bar)
            if self._done():
                batches.close()  # a batch read ahead goes back to the reader
                return
        self.epoch += 1
        self._log_bad_rows()
        cfg = self.config
        if cfg.eval_each_epoch and self.eval_data is not None and run.evaluated_at != self.step:
            run.result, run.evaluated_at = self.end.evaluate_and_keep_best(), self.step

    def _after_step(self, record: dict[str, Any], run: _Progress, bar: tqdm) -> None:
        """Progress, log and callbacks of an optimizer step; evaluation and checkpoint when due."""
        cfg = self.config
        rate = run.samples / max(time.perf_counter() - run.t0, 1e-9)
        run.ema = record["loss"] if run.ema is None else 0.98 * run.ema + 0.02 * record["loss"]
        bar.update(1)
        bar.set_postfix(
            epoch=self.epoch, loss=f"{run.ema:.4f}", samples_s=f"{rate:,.0f}", refresh=False
        )
        record = {"step": self.step, "split": "train", "epoch": self.epoch, **record}
        record["samples_per_s"] = rate
        self._log(record, tensorboard=self.step % cfg.log_every == 0)
        for cb in self.callbacks:
            cb.on_step_end(self, record)
        if cfg.eval_every and self.step % cfg.eval_every == 0 and self.eval_data is not None:
            run.result, run.evaluated_at = self.end.evaluate_and_keep_best(), self.step
        if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
            self.save()

    # ---- rows the reader skipped (on_bad_row: skip), see docs/data.md ----------------
    def _log_bad_rows(self) -> None:
        """Log the epoch just finished's skipped rows per reason as a ``split: data`` record
        (``skipped_rows`` and ``bad_rows/<reason>``); nothing when none was skipped."""
        counts = self.pipeline.last_epoch_bad_rows()
        if counts:
            per = {f"bad_rows/{k}": v for k, v in counts.items()}
            n = sum(counts.values())
            self._log(
                {"step": self.step, "split": "data", "epoch": self.epoch, "skipped_rows": n, **per}
            )

    def _done(self) -> bool:
        cfg = self.config
        budget = cfg.max_steps is not None and self.step >= cfg.max_steps
        return budget or self.should_stop or self._stop_requested()

    def _stop_requested(self) -> bool:
        """A stop signal, once this process may act on it: at once in one process; in a
        distributed run only a stop every rank agreed on (reduced with the step's losses),
        since ranks that stopped at different steps would wait for each other forever."""
        if self._stop_agreed:
            return True
        return not self.context.agreed_stops_only and self.signals.received is not None

    def _log(self, record: dict[str, Any], tensorboard: bool = True) -> None:
        if not self.context.is_main:
            return
        self.logger.log(record)
        if tensorboard:
            self.logger.scalars(record)
        for cb in self.callbacks:
            cb.on_log(self, record)

    # ---- evaluation --------------------------------------------------------------
    def predict(self, data: Iterable[Batch]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Probabilities (BCE tasks) and labels per task over ``data`` (this rank only)."""
        self._ensure_tasks(data)
        assert self.tasks is not None
        out = evaluation.predict(
            self.model, data, self.tasks, self.device, autocast=self.config.bf16
        )
        return {t: d["pred"] for t, d in out.items()}, {t: d["label"] for t, d in out.items()}

    def _ensure_tasks(self, data: Iterable[Batch]) -> None:
        if self.tasks is None:  # model without a ``tasks`` attribute: look at one batch
            with torch.no_grad():
                self._set_tasks(list(self.model(next(iter(data)).to(self.device))))

    def evaluate(
        self, data: Iterable[Batch] | None = None, split: str = "eval"
    ) -> dict[str, float | None]:
        """Metrics per task on ``data`` (default: the eval data), logged as ``split`` and, for
        the ``eval`` split, passed to callbacks (``best``: the restored best checkpoint's).
        In a distributed run they are global: every rank's predictions are gathered."""
        data = data if data is not None else self.eval_data
        assert data is not None, "no eval data"
        data = self.context.eval_batches(data, self.model)
        self._ensure_tasks(data)
        assert self.tasks is not None
        result = evaluation.evaluate(
            self.model,
            data,
            self.tasks,
            self.device,
            max_batches=self.config.eval_batches,
            autocast=self.config.bf16,
        )
        # epoch: epochs completed (an evaluation at an epoch's end counts it)
        self._log({"step": self.step, "split": split, "epoch": self.epoch, **result})
        self.logger.flush()
        if split == "eval":
            for cb in self.callbacks:
                cb.on_eval(self, result)
        return result

    # ---- state -------------------------------------------------------------------
    def progress_state(self) -> dict[str, Any]:
        """Step, epoch, LR schedule, multi-task objective and callback states: what a
        checkpoint needs besides tensors and is the same on every rank."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "scheduler": self.scheduler.state_dict(),
            "objective": self.objective.state_dict() if self.objective is not None else {},
            "callbacks": [cb.state_dict() for cb in self.callbacks],
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything exact resume needs in one process: weights, optimizers, schedule,
        objective, reader position, RNG states, step and epoch, callback states."""
        state: dict[str, Any] = {
            "model": self.model.state_dict(),
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "rng": rng_state(),
            **self.progress_state(),
        }
        if self.pipeline.resumable:
            state["data"] = self.pipeline.position()
        return state

    def restore_progress(self, state: dict[str, Any]) -> None:
        """Step, epoch, LR schedule, multi-task objective and callbacks from a checkpoint."""
        self.step = int(state.get("step", 0))
        self.epoch = int(state.get("epoch", 0))
        if "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])
        if state.get("objective"):
            if self.objective is not None:
                self.objective.load_state_dict(state["objective"])
            else:  # tasks known only after the first batch
                self._pending_objective = state["objective"]
        for cb, s in zip(self.callbacks, state.get("callbacks", [])):
            cb.load_state_dict(s)
        self.last_saved = self.step

    def load_state_dict(self, state: dict[str, Any], source: str | Path = "checkpoint") -> None:
        """Restore everything :meth:`state_dict` holds. A checkpoint of another model, dim or
        table layout is a CheckpointError naming ``source``, the parameter and both shapes."""
        load_trainer_state(self, state, source)

    # ---- checkpoints (how: the context's checkpointer; when and which: here) --------
    def save(self, name: str | None = None) -> Path | None:
        """Write a checkpoint (``step-N``, or ``name``) under run_dir/checkpoints (the
        process(es) the checkpointer writes on: rank 0, or every rank of a sharded run).

        The run log is flushed (and fsynced) first: a run killed later and resumed from this
        checkpoint has every record up to it."""
        if self.checkpointer is None or (name is None and self.last_saved == self.step):
            return None
        if self.context.is_main and is_rank0():
            self.logger.flush(sync=True)
        path = self.checkpointer.save(self, name)
        if path is None:
            return None
        if name is None:
            self.last_saved = self.step
        for cb in self.callbacks:
            cb.on_checkpoint(self, path)
        return path

    def resume(self, path: str | Path) -> dict[str, Any]:
        """Load a checkpoint folder written by :meth:`save` (verified against its manifest)
        and continue from it; returns its meta."""
        meta = self._checkpointer().resume(self, Path(path))
        self.last_saved = self.step
        self.end.relink_best()
        return meta

    def load_weights(self, path: str | Path) -> dict[str, Any]:
        """The model's weights (only) from checkpoint ``path``: the best one at the end of
        training, a checkpoint to evaluate. Returns its meta (step, epoch)."""
        return self._checkpointer().load_weights(self, Path(path))

    def _checkpointer(self) -> Checkpointer:
        if self.checkpointer is not None:
            return self.checkpointer
        # no run_dir: a checkpoint can still be read (recis eval, a notebook)
        return self.context.checkpointer(Path("."), self.config)
