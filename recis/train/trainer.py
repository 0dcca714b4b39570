"""The training loop: train and evaluate interleaved, log, checkpoint, resume exactly."""

from __future__ import annotations

import contextlib
import copy
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from recis.config import TaskConfig, TrainConfig
from recis.embedding.collection import LookupModule
from recis.errors import CheckpointError, ConfigError, RecisError
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
from .checkpoint import (
    CheckpointManager,
    link_checkpoint,
    load_checkpoint,
    save_checkpoint,
    saved_step,
)
from .runlog import RunLogger
from .state import rng_state, set_rng_state


def _is_rank0() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


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
            epoch; if it has ``state_dict``/``load_state_dict`` its position is
            checkpointed (exact resume).
        eval_data: an iterable of batches for evaluation, or None.
        config: training options.
        run_dir: where metrics.jsonl, tb/ and checkpoints/ go (None: write nothing).
        device: where batches are moved.
        callbacks: :class:`~recis.train.callbacks.Callback` objects, or plain
            ``fn(record)`` called with every logged record.

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
    ) -> None:
        self.model = model
        self.train_data = train_data
        self.eval_data = eval_data
        self.config = config
        self.device = torch.device(device)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.callbacks = as_callbacks(callbacks)
        self.early_stopping: EarlyStopping | None = None
        if config.early_stopping is not None:
            self.early_stopping = EarlyStopping(config.early_stopping)
            self.callbacks.append(self.early_stopping)
            if config.early_stopping.restore_best and (run_dir is None or eval_data is None):
                raise ConfigError(
                    "train.early_stopping.restore_best: needs eval data and a run_dir "
                    "(the best checkpoint is kept in run_dir/checkpoints/best)"
                )
        sparse, dense = split_parameters(model)
        self.dense_params = dense
        self.dense_optimizer = dense_optimizer(dense, config.dense_optimizer)
        self.optimizers = [self.dense_optimizer]
        if sparse:
            self.optimizers.append(sparse_optimizer(sparse, config.sparse_optimizer))
        self.scheduler = build_schedule(self.dense_optimizer, config.schedule, config.max_steps)
        self.tasks: list[TaskConfig] | None = None
        self.objective: Any = None
        outputs = getattr(model, "tasks", None)
        if config.tasks or outputs:
            self._set_tasks(list(outputs or [t.name for t in config.tasks]))
        self.logger = RunLogger(run_dir, tensorboard=config.tensorboard)
        self.checkpoints = (
            CheckpointManager(self.run_dir / "checkpoints", config.keep_last)
            if self.run_dir is not None
            else None
        )
        self.step = 0  # optimizer steps taken
        self.epoch = 0  # completed epochs
        self.should_stop = False
        self._micro = 0
        self._acc: np.ndarray | None = None
        self._signal: int | None = None  # SIGINT / SIGTERM received on this process
        self._stop_agreed = False  # every rank saw a stop signal (one process: this one)
        self._last_saved = -1
        self.final_path: Path | None = None  # checkpoints/final once fit has written it
        # embedding modules that can send the next batch's ids ahead (sharded hashed tables)
        self._senders = [
            m for m in model.modules() if isinstance(m, LookupModule) and m.sends_ahead
        ]
        self._ahead: tuple[Batch, Batch] | None = None  # (next batch, on the device)
        self._position: Any = None  # the reader's state after the batch in training

    # ---- objective -------------------------------------------------------------
    def _set_tasks(self, outputs: list[str]) -> None:
        self.tasks = resolve_tasks(self.config, outputs)
        self.objective = build_objective(self.config, self.tasks)
        pending = getattr(self, "_pending_objective", None)
        if pending:
            self.objective.load_state_dict(pending)

    def losses(self, logits: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        """Per-task mean losses (float32 scalars)."""
        if self.tasks is None:
            self._set_tasks(list(logits))
        assert self.tasks is not None
        # models whose objective is not per-row BCE (in-batch softmax, regularizers) define it
        model_loss = getattr(getattr(self.model, "module", self.model), "loss", None)
        if callable(model_loss):
            return model_loss(logits, batch)
        return {t.name: task_loss(t.loss, logits[t.name], batch.labels[t.name]) for t in self.tasks}

    # ---- one step --------------------------------------------------------------
    def train_step(self, batch: Batch, next_batch: Batch | None = None) -> dict[str, float] | None:
        """Forward and backward on one micro-batch; an optimizer step every ``grad_accum``.

        ``next_batch``: the batch of the next call, when known. A sharded model's hashed
        tables then send its ids to the ranks that hold them during this step
        (:meth:`~recis.distributed.ShardedHashedEmbeddingCollection.prefetch`), which
        takes two collectives off the next step's path; :meth:`fit` does this.

        Returns the step's record (mean losses over its micro-batches, objective
        state, learning rate) after an optimizer step, None between them.
        """
        cfg = self.config
        self.model.train()
        if self._ahead is not None and self._ahead[0] is batch:
            batch = self._ahead[1]  # moved (and its ids sent) during the step before
        else:
            batch = batch.to(self.device)
        self._ahead = None
        if next_batch is not None and self._senders:
            self._ahead = (next_batch, next_batch.to(self.device))
            for m in self._senders:
                m.prefetch(self._ahead[1].sparse)
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
        flag = torch.tensor(1.0 if self._signal is not None else 0.0, dtype=total.dtype)
        values = self._reduced(
            torch.stack([total.detach() * cfg.grad_accum, *losses.values(), flag.to(total.device)])
        )
        total.backward()
        values = values()
        if values.pop() > 0:
            self._stop_agreed = True
        if not np.isfinite(values[0]):
            raise FloatingPointError(f"step {self.step}: loss is {values[0]} ({values[1:]})")
        self._acc = np.asarray(values) if self._acc is None else self._acc + values
        self._micro += 1
        if self._micro < cfg.grad_accum:
            return None
        mean = self._acc / self._micro
        self._acc, self._micro = None, 0
        if cfg.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.dense_params, cfg.clip)
        for opt in self.optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        per_task = dict(zip(losses, mean[1:].tolist()))
        self.objective.update(per_task)
        self.step += 1
        record = {"loss": float(mean[0]), "lr": lr}
        record.update({f"loss/{t}": v for t, v in per_task.items()})
        record.update(self.objective.log())
        return record

    def _reduced(self, values: torch.Tensor) -> Callable[[], list[float]]:
        """``values`` of this step as floats, once the returned function is called (the
        distributed trainer averages them over ranks meanwhile)."""
        return values.tolist

    # ---- loop ------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        """SIGINT / SIGTERM: finish the current step, checkpoint, stop. A second SIGINT
        interrupts at once (KeyboardInterrupt; an unfinished checkpoint is discarded)."""
        if signum == signal.SIGINT and self._signal == signal.SIGINT:
            raise KeyboardInterrupt
        self._signal = signum

    def _catch_signals(self) -> dict[int, Any]:
        """Install the stop handler for SIGINT and SIGTERM (main thread only); the old ones."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

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
        cfg = self.config
        if self.checkpoints is not None and _is_rank0():
            self.checkpoints.clean_partial()
        self._signal, self._stop_agreed = None, False  # a stop asked of an earlier fit() is done
        handlers = self._catch_signals()
        try:  # a callback or tqdm failing here must not leave recis's handlers installed
            for cb in self.callbacks:
                cb.on_train_start(self)
            total = cfg.max_steps
            if total is None and hasattr(self.train_data, "__len__"):  # batches per epoch known
                total = cfg.epochs * len(self.train_data) // cfg.grad_accum  # type: ignore[arg-type]
            bar = tqdm(
                total=total,
                initial=self.step,
                disable=not cfg.progress,
                unit="step",
                dynamic_ncols=True,
                mininterval=0.5 if sys.stderr.isatty() else 10.0,
            )
        except BaseException:
            self._restore_signals(handlers)
            raise
        result: dict[str, Any] = {}
        evaluated_at = -1
        samples, t0, ema = 0, time.perf_counter(), None
        try:
            while self.epoch < cfg.epochs and not self._done():
                batches = self._epoch_batches()
                for batch, upcoming in batches:
                    record = self.train_step(batch, upcoming)
                    samples += batch.batch_size
                    if record is None:
                        continue
                    rate = samples / max(time.perf_counter() - t0, 1e-9)
                    ema = record["loss"] if ema is None else 0.98 * ema + 0.02 * record["loss"]
                    bar.update(1)
                    bar.set_postfix(
                        epoch=self.epoch, loss=f"{ema:.4f}", samples_s=f"{rate:,.0f}", refresh=False
                    )
                    record = {"step": self.step, "split": "train", "epoch": self.epoch, **record}
                    record["samples_per_s"] = rate
                    self._log(record, tensorboard=self.step % cfg.log_every == 0)
                    for cb in self.callbacks:
                        cb.on_step_end(self, record)
                    if (
                        cfg.eval_every
                        and self.step % cfg.eval_every == 0
                        and self.eval_data is not None
                    ):
                        result, evaluated_at = self._evaluate_and_keep_best(), self.step
                    if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                        self.save()
                    if self._done():
                        batches.close()  # a batch read ahead goes back to the reader
                        break
                else:
                    self.epoch += 1
                    self._log_bad_rows()
                    if (
                        cfg.eval_each_epoch
                        and self.eval_data is not None
                        and evaluated_at != self.step
                    ):
                        result, evaluated_at = self._evaluate_and_keep_best(), self.step
            result = self._finish(result, evaluated_at, self._stop_requested())
            result = self._with_bad_rows(result)
        except BaseException as err:
            bar.close()
            self._close_quietly()
            self._restore_signals(handlers)
            self._say_where_the_last_checkpoint_is(err)
            raise
        bar.close()
        try:
            self.logger.close()
        finally:
            self._restore_signals(handlers)
        for cb in self.callbacks:
            cb.on_train_end(self, result)
        return result

    # ---- io hook: rows the reader skipped (on_bad_row: skip), see docs/data.md ----------
    def _log_bad_rows(self) -> None:
        """Log the epoch just finished's skipped rows per reason as a ``split: data`` record
        (``skipped_rows`` and ``bad_rows/<reason>``); nothing when none was skipped."""
        last = getattr(self.train_data, "last_epoch_bad_rows", None)
        counts = last() if last is not None else {}
        if counts:
            per = {f"bad_rows/{k}": v for k, v in counts.items()}
            n = sum(counts.values())
            self._log(
                {"step": self.step, "split": "data", "epoch": self.epoch, "skipped_rows": n, **per}
            )

    def _with_bad_rows(self, result: dict[str, Any]) -> dict[str, Any]:
        """The final summary also says how many training rows were skipped (when any were)."""
        report = getattr(self.train_data, "bad_rows_report", None)
        counts = report() if report is not None else {}
        return {**result, "skipped_rows": sum(counts.values())} if counts else result

    # ---- end of the io hook -----------------------------------------------------------

    def _restore_signals(self, handlers: dict[int, Any]) -> None:
        for s, h in handlers.items():
            signal.signal(s, h)

    def _close_quietly(self) -> None:
        """Close the run log on the way out of a failure, which it must not hide (a full disk
        fails the log's last write too; TensorBoard's writer raises its own errors)."""
        with contextlib.suppress(Exception):
            self.logger.close()

    def _finish(self, result: dict[str, Any], evaluated_at: int, signalled: bool) -> dict[str, Any]:
        """After the loop: checkpoint first, then (unless stopped by a signal) restore the best
        checkpoint if asked, link ``final``, and evaluate."""
        if signalled:
            path = self.save() or self._checkpoint_path(self.step)
            name = signal.Signals(self._signal or signal.SIGTERM).name.lower()
            return {**result, "stopped": name, "checkpoint": str(path) if path else None}
        self.save()
        final = self._checkpoint_path(self.step)
        es = self.early_stopping
        restored = False
        if (
            es is not None
            and es.config.restore_best
            and es.best_step is not None
            and es.best_step != self.step
        ):
            best = self._best_path(es.best_step)
            if best is None:
                raise CheckpointError(
                    f"no checkpoint holds the best evaluation's model (step {es.best_step}: "
                    f"neither checkpoints/best nor step-{es.best_step:08d}); the model of step "
                    f"{self.step} is in {self._checkpoint_path(self.step)}"
                )
            self.load_weights(best)
            final, restored = best, True
        if final is not None:
            try:
                self.final_path = self._link(final, "final")
            except RecisError as err:
                self.final_path = final  # the end state is saved there all the same
                self._say_where_the_model_is(err)
                raise
        if self.eval_data is not None and (evaluated_at != self.step or restored):
            try:
                # a restored best is evaluated as "best": the eval history keeps what was seen
                result = self.evaluate(split="best" if restored else "eval")
            except BaseException as err:
                self._say_where_the_model_is(err)
                raise
        if self.should_stop:
            result = {**result, "stopped": "early_stopping"}
        if es is not None and es.best_step is not None:
            result = {**result, "best_step": es.best_step, "best_epoch": es.best_epoch}
        return result

    def _say_where_the_last_checkpoint_is(self, err: BaseException) -> None:
        """A RecisError that stops training mid-run names the checkpoint to resume from."""
        if (
            not isinstance(err, RecisError)
            or self.final_path is not None  # after training: the message names the model
            or self._last_saved < 0
            or not _is_rank0()
            or not err.args
        ):
            return
        path = self._checkpoint_path(self._last_saved)
        if path is not None and path.is_dir() and "saved in" not in str(err.args[0]):
            err.args = (f"{err.args[0]} (last checkpoint: {path})", *err.args[1:])

    def _say_where_the_model_is(self, err: BaseException) -> None:
        """Add the trained model's place to a failure after training (a RecisError's one-line
        message; any other error also gets a line on stderr)."""
        where = self.final_path
        if where is None or not _is_rank0():
            return
        note = f"the trained model is saved in {where}"
        if isinstance(err, RecisError) and err.args:
            err.args = (f"{err.args[0]} ({note})", *err.args[1:])
        else:
            print(f"recis: training finished but failed afterwards; {note}", file=sys.stderr)

    def _evaluate_and_keep_best(self) -> dict[str, float]:
        """Evaluate; with ``restore_best``, a new best is checkpointed and linked as ``best``."""
        result = self.evaluate()
        es = self.early_stopping
        if es is not None and es.config.restore_best and es.improved:
            self.save()
            path = self._checkpoint_path(self.step)
            if path is not None:
                self._link(path, "best")
        return result

    def _best_path(self, step: int) -> Path | None:
        """The checkpoint holding step ``step``'s model: ``best`` when it does, else the
        numbered one (a kill between a save and the ``best`` link, or a resume from an
        older checkpoint, leaves ``best`` behind or set aside); None when neither does."""
        for name in ("best", None):
            path = self._checkpoint_path(step, name=name)
            if path is not None and path.is_dir() and saved_step(path) == step:
                return path
        return None

    def _relink_best(self) -> None:
        """After a resume: ``best`` is made to hold the early-stopping state's best step
        again while its numbered checkpoint is still there (``keep_last`` may drop it)."""
        es = self.early_stopping
        if es is None or not es.config.restore_best or es.best_step is None:
            return
        path = self._best_path(es.best_step)
        if path is not None and path.name != "best":
            self._link(path, "best")

    def _checkpoint_path(self, step: int, name: str | None = None) -> Path | None:
        """Where checkpoint ``name`` (default: the numbered one of ``step``) is."""
        if self.checkpoints is None:
            return None
        return self.checkpoints.directory / (name or f"step-{step:08d}")

    def _link(self, source: Path, name: str) -> Path | None:
        """``checkpoints/name`` as hard links to ``source`` (rank 0)."""
        if not _is_rank0():
            return None
        return link_checkpoint(source, name)

    def load_weights(self, path: str | Path) -> dict[str, Any]:
        """The model's weights (only) from checkpoint ``path``: the best one at the end of
        training, a checkpoint to evaluate. Returns its meta (step, epoch)."""
        state, meta = load_checkpoint(path, map_location=self.device)
        self._load_model_state(state.get("model"), path)
        return meta

    def _reader(self) -> Any:
        """The object whose ``state_dict`` is the reader's position (None: not resumable)."""
        return self.train_data if hasattr(self.train_data, "state_dict") else None

    def _reader_position(self) -> Any:
        """The reader's position after the last batch trained on (not after one read ahead)."""
        if self._position is not None:
            return self._position
        reader = self._reader()
        return reader.state_dict() if reader is not None else None

    def _epoch_batches(self) -> Iterator[tuple[Batch, Batch | None]]:
        """One epoch's batches, each with the one after it when the model sends ids ahead
        (None otherwise, and after the last). Reading one batch ahead moves the reader, so
        its position after each batch is kept for checkpoints: a run resumes at the batch
        after the last one trained on."""
        it = iter(self.train_data)
        if not self._senders:
            for batch in it:
                yield batch, None
            return
        reader = self._reader()

        def position() -> Any:
            return copy.deepcopy(reader.state_dict()) if reader is not None else None

        batch = next(it, None)
        at = position()
        try:
            while batch is not None:
                upcoming = next(it, None)
                after = position()
                self._position = at
                yield batch, upcoming
                batch, at = upcoming, after
        finally:
            if batch is None:  # the epoch's end: the live position is right
                self._position = None
            elif hasattr(reader, "load_state_dict"):  # stopped early: unread the batch ahead
                reader.load_state_dict(self._position)
                self._position = None

    def _done(self) -> bool:
        cfg = self.config
        budget = cfg.max_steps is not None and self.step >= cfg.max_steps
        return budget or self.should_stop or self._stop_requested()

    def _stop_requested(self) -> bool:
        """A stop signal, once this process may act on it (one process: at once)."""
        return self._stop_agreed or self._signal is not None

    def _log(self, record: dict[str, Any], tensorboard: bool = True) -> None:
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
    ) -> dict[str, float]:
        """Metrics per task on ``data`` (default: the eval data), logged as ``split`` and, for
        the ``eval`` split, passed to callbacks (``best``: the restored best checkpoint's)."""
        data = data if data is not None else self.eval_data
        assert data is not None, "no eval data"
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
    def state_dict(self) -> dict[str, Any]:
        """Everything exact resume needs: weights, optimizers, schedule, objective,
        reader position, RNG states, step and epoch, callback states."""
        state: dict[str, Any] = {
            "model": self.model.state_dict(),
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "scheduler": self.scheduler.state_dict(),
            "objective": self.objective.state_dict() if self.objective is not None else {},
            "step": self.step,
            "epoch": self.epoch,
            "rng": rng_state(),
            "callbacks": [cb.state_dict() for cb in self.callbacks],
        }
        if self._reader() is not None:
            state["data"] = self._reader_position()
        return state

    def _restore_progress(self, state: dict[str, Any]) -> None:
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

    def load_state_dict(self, state: dict[str, Any], source: str | Path = "checkpoint") -> None:
        """Restore everything :meth:`state_dict` holds. A checkpoint of another model, dim or
        table layout is a CheckpointError naming ``source``, the parameter and both shapes."""
        self._load_model_state(state["model"], source)
        if len(state["optimizers"]) != len(self.optimizers):
            raise CheckpointError(
                f"{source}: checkpoint has {len(state['optimizers'])} optimizers, trainer has "
                f"{len(self.optimizers)}: the model's sparse/dense split changed"
            )
        for i, (opt, s) in enumerate(zip(self.optimizers, state["optimizers"])):
            try:
                opt.load_state_dict(s)
            except (ValueError, KeyError, RuntimeError, TypeError, IndexError) as err:
                raise CheckpointError(
                    f"{source}: optimizer {i} does not match this model's: {err}"
                ) from None
        self._restore_progress(state)
        if "data" in state and hasattr(self.train_data, "load_state_dict"):
            self.train_data.load_state_dict(state["data"])
        if "rng" in state:
            set_rng_state(state["rng"])
        self._last_saved = self.step

    def _load_model_state(self, saved: Any, source: str | Path) -> None:
        """``model.load_state_dict(saved)`` after checking names and shapes: a mismatch is one
        CheckpointError naming the parameters, never a torch traceback."""
        # modules whose saved tensors are sized by their content (the sharded hashed
        # engine's live rows) load any row count: only their other dims must agree
        sized = [f"{n}." for n, m in self.model.named_modules() if hasattr(m, "prepare_load")]
        check_model_state(self.model.state_dict(), saved, source, content_sized=tuple(sized))
        try:
            self.model.load_state_dict(saved)
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{source}: does not match the model: {first}") from None

    def save(self, name: str | None = None) -> Path | None:
        """Write a checkpoint (``step-N``, or ``name``) under run_dir/checkpoints; rank 0 only.

        The run log is flushed (and fsynced) first: a run killed later and resumed from this
        checkpoint has every record up to it."""
        if self.checkpoints is None or (name is None and self._last_saved == self.step):
            return None
        if not _is_rank0():
            return None
        self.logger.flush(sync=True)
        meta = {"step": self.step, "epoch": self.epoch, "time": time.time()}
        if name is None:
            path = self.checkpoints.save(self.step, self.state_dict(), meta)
            self._last_saved = self.step
        else:
            path = save_checkpoint(self.checkpoints.directory / name, self.state_dict(), meta)
        for cb in self.callbacks:
            cb.on_checkpoint(self, path)
        return path

    def resume(self, path: str | Path) -> None:
        """Load a checkpoint folder written by :meth:`save` (verified against its manifest)
        and continue from it."""
        state, _ = load_checkpoint(path, map_location=self.device)
        try:
            self.load_state_dict(state, source=path)
        except RecisError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
            # a state.json whose values are not what this trainer wrote
            raise CheckpointError(
                f"{path}: not a trainer state this trainer can load: {type(err).__name__}: {err}"
            ) from None
        self._relink_best()


def check_model_state(
    own: dict[str, Any], saved: Any, source: str | Path, content_sized: tuple[str, ...] = ()
) -> None:
    """Compare a saved model state with the model's: missing and unexpected names and
    tensors of another shape are one CheckpointError naming them and both shapes.
    Tensors under the ``content_sized`` prefixes may differ in their first dim (rows)."""

    def differ(a: torch.Size, b: torch.Size, key: str) -> bool:
        if content_sized and key.startswith(content_sized):
            return a[1:] != b[1:]
        return a != b

    if not isinstance(saved, dict):
        raise CheckpointError(f"{source}: the model state is not a dict of tensors")
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    shapes = [
        f"{k} is {list(saved[k].shape)} in the checkpoint, {list(v.shape)} in the model"
        for k, v in own.items()
        if k in saved
        and isinstance(v, torch.Tensor)
        and isinstance(saved[k], torch.Tensor)
        and differ(saved[k].shape, v.shape, k)
    ]
    problems = []
    if shapes:
        problems.append("shape of " + "; ".join(_few(shapes)))
    if missing:
        problems.append("missing " + ", ".join(_few(missing)))
    if unexpected:
        problems.append("unexpected " + ", ".join(_few(unexpected)))
    if problems:
        raise CheckpointError(
            f"{source}: checkpoint of another model (other model, embedding dim or table "
            f"layout?): {' | '.join(problems)}"
        )


def _few(items: list[str], n: int = 5) -> list[str]:
    return items if len(items) <= n else [*items[:n], f"... ({len(items) - n} more)"]
