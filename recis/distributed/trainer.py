"""The trainer on a sharded model: fused sparse updates, reduced dense gradients, global
metrics, sharded checkpoints.

It reuses :class:`recis.train.Trainer`'s loop and changes what differs across ranks:

- optimizers: the sharded tables update inside backward (fbgemm fused optimizer, exposed
  as ``model.fused_optimizer``); dense parameters get the configured torch optimizer,
  whose gradients DDP (torchrun) or ``hvd.DistributedOptimizer`` (Horovod) average;
- every rank runs the same number of steps (:func:`even_batches`), since every step is
  a collective;
- evaluation gathers all ranks' predictions and computes AUC / logloss once, globally;
- only rank 0 logs; checkpoints are written by all ranks with torch.distributed.checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from recis.config import TrainConfig
from recis.io.batch import Batch
from recis.optim import build_schedule
from recis.train import Trainer
from recis.train.checkpoint import link_checkpoint
from recis.train.state import rng_state_json, set_rng_state_json

from . import checkpoint as dcp_checkpoint
from .collectives import even_batches, mean_over_ranks_async
from .context import DistContext
from .optim import build_optimizer  # optimizer construction: see recis/distributed/optim.py


class _EvenBatches:
    """Re-iterable view of ``data`` where all ranks yield the same number of batches.

    When another rank ran out first, the rest of this rank's pass (at most a batch or two
    when no row is skipped: shards differ by one row at most) is read and dropped, so that
    this rank's reader, like the others', starts its next epoch on the next iteration
    instead of handing out the tail of the old one.
    """

    def __init__(self, data: Iterable[Batch]) -> None:
        self.data = data

    def __iter__(self) -> Iterator[Batch]:
        it = iter(self.data)
        for batch, _ in even_batches(it):
            yield batch
        for _ in it:  # the same rows are dropped whether or not the run was resumed
            pass

    # this rank's skipped-row counts (on_bad_row: skip), which the trainer logs (rank 0's)
    def bad_rows_report(self) -> dict[str, int]:
        report = getattr(self.data, "bad_rows_report", None)
        return report() if report is not None else {}

    def last_epoch_bad_rows(self) -> dict[str, int]:
        last = getattr(self.data, "last_epoch_bad_rows", None)
        return last() if last is not None else {}


class _PaddedEval:
    """Eval batches of this rank, with the padding steps run inside the iterator.

    A sharded forward is a collective, so a rank that ran out of eval batches keeps
    running the model on its last batch (output discarded) until every rank is done; the
    consumer (the trainer's evaluation) only ever sees this rank's real batches.
    """

    def __init__(self, data: Iterable[Batch], model: nn.Module, device: torch.device) -> None:
        self.data, self.model, self.device = data, model, device

    def __iter__(self) -> Iterator[Batch]:
        for batch, real in even_batches(self.data, pad=True):
            if real:
                yield batch
            else:
                with torch.no_grad():
                    self.model(batch.to(self.device))


class DistributedTrainer(Trainer):
    """:class:`~recis.train.Trainer` for a model sharded by :func:`~recis.distributed.shard_model`.

    Args:
        model: a DistributedModelParallel model.
        train_data: this rank's batches (``B`` rows each, per rank).
        eval_data: this rank's eval batches, or None.
        config: training options.
        ctx: this process's :class:`DistContext`.
        run_dir: metrics (rank 0) and checkpoints (all ranks).
    """

    def __init__(
        self,
        model: nn.Module,
        train_data: Iterable[Batch],
        eval_data: Iterable[Batch] | None,
        config: TrainConfig,
        ctx: DistContext,
        run_dir: str | Path | None = None,
        callbacks: list[Any] | None = None,
    ) -> None:
        if not ctx.is_main:
            config = dataclasses.replace(config, progress=False)
        super().__init__(
            model, _EvenBatches(train_data), eval_data, config, run_dir, ctx.device, callbacks
        )
        self.ctx = ctx
        self.optimizer = build_optimizer(model, config, ctx)
        self.optimizers = [self.optimizer]
        dense = dict(self.optimizer.optimizers).get("dense")
        if dense is not None:  # the LR schedule and clipping act on the real dense optimizer
            self.dense_optimizer = dense._optimizer  # type: ignore[attr-defined]
            self.dense_params = list(dense.params.values())
            self.scheduler = build_schedule(self.dense_optimizer, config.schedule, config.max_steps)
        inner = getattr(model, "module", model)
        if self.tasks is None and getattr(inner, "tasks", None):
            # known up front: finding them by a forward on one rank would desync the ranks
            self._set_tasks(list(inner.tasks))

    def _reduced(self, values: torch.Tensor) -> Callable[[], list[float]]:
        """The step's losses averaged over ranks: the global batch's, so every rank logs,
        checks for NaN and updates the multi-task objective with the same numbers. The
        all-reduce is started before backward and waited for after it, so it costs no
        extra synchronisation point."""
        return mean_over_ranks_async(values)

    def _log(self, record: dict[str, Any], tensorboard: bool = True) -> None:
        if self.ctx.is_main:
            super()._log(record, tensorboard)

    def evaluate(
        self, data: Iterable[Batch] | None = None, split: str = "eval"
    ) -> dict[str, float]:
        """Global metrics: every rank's predictions are gathered (by the base evaluation)."""
        data = data if data is not None else self.eval_data
        assert data is not None, "no eval data"
        return super().evaluate(_PaddedEval(data, self.model, self.device), split=split)

    def _stop_requested(self) -> bool:
        """Only a stop every rank agreed on (reduced with the step's losses): ranks that
        stopped at different steps would wait for each other forever."""
        return self._stop_agreed

    def _checkpoint_path(self, step: int, name: str | None = None) -> Path | None:
        if self.run_dir is None:
            return None
        return self.run_dir / "checkpoints" / (name or f"step-{step}")

    def _link(self, source: Path, name: str) -> Path | None:
        """``checkpoints/name`` as hard links to ``source`` (``final``, ``best``): the sharded
        checkpoint loads at any world size or unsharded. Made by rank 0; collective."""
        path = link_checkpoint(source, name) if self.ctx.is_main else None
        if dist.is_initialized():
            dist.barrier()
        return path if path is not None else source.parent / name

    def load_weights(self, path: str | Path) -> dict[str, Any]:
        """The sharded model's weights from checkpoint ``path`` (collective); its meta."""
        return dcp_checkpoint.load(path, self.model)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def _meta(self) -> dict[str, Any]:
        """What a checkpoint needs besides tensors and is the same on every rank."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "scheduler": self.scheduler.state_dict(),
            "objective": self.objective.state_dict() if self.objective is not None else {},
            "callbacks": [cb.state_dict() for cb in self.callbacks],
        }

    def _rank_state(self) -> dict[str, Any]:
        """What differs per rank: the reader's position (exact resume) and RNG states."""
        out: dict[str, Any] = {"rng": rng_state_json()}
        if self._reader() is not None:
            out["data"] = json.loads(json.dumps(self._reader_position(), default=_json_number))
        return out

    def _reader(self) -> Any:
        data = self.train_data.data  # type: ignore[attr-defined]
        return data if hasattr(data, "state_dict") else None

    def save(self, name: str | None = None) -> Path | None:
        """Sharded checkpoint ``step-N`` (or ``name``), written by every rank (collective)."""
        if self.run_dir is None or (name is None and self._last_saved == self.step):
            return None
        if self.ctx.is_main:  # the run log up to this checkpoint is on disk before it
            self.logger.flush(sync=True)
        path = dcp_checkpoint.save(
            self.run_dir / "checkpoints" / (name or f"step-{self.step}"),
            self.model,
            self.optimizer,
            self._meta(),
            rank_state=self._rank_state(),
        )
        if name is None:
            self._last_saved = self.step
        return path

    def load(self, path: str | Path) -> dict[str, Any]:
        """Restore model, optimizer, step, epoch, LR schedule and this rank's reader position
        from a checkpoint saved at any world size.

        At the world size it was saved with, every rank continues at the exact row after its
        last trained batch. At another world size the model and optimizer reshard, but reader
        positions cannot map rank to rank (each rank's share of the rows changes): the
        checkpoint's epoch restarts from its first batch, and the rank-0 log says so.
        """
        meta = dcp_checkpoint.load(path, self.model, self.optimizer)
        self._restore_progress(meta)
        self._last_saved = self.step
        data = self.train_data.data  # type: ignore[attr-defined]
        mine = dcp_checkpoint.load_rank_state(path, self.ctx.rank, self.ctx.world_size)
        if mine is not None:
            set_rng_state_json(mine["rng"], f"{path}/ranks.json")
            if "data" in mine and hasattr(data, "load_state_dict"):
                data.load_state_dict(mine["data"])
        elif hasattr(data, "state_dict"):
            _restart_epoch(data, self.epoch)
            if self.ctx.is_main:
                saved = int(meta.get("world_size", 1))
                why = (
                    f"saved by {saved} ranks, this run has {self.ctx.world_size}: reader "
                    "positions do not map across world sizes"
                    if saved != self.ctx.world_size
                    else "it holds no reader positions"
                )
                print(
                    f"{path}: {why}; epoch {self.epoch} restarts from its first batch "
                    f"(its rows trained on before step {self.step} are read again)",
                    flush=True,
                )
        self._relink_best()  # collective when it links: every rank sees the same folder
        return meta


def _json_number(value: Any) -> Any:
    """numpy scalars in reader states -> Python numbers (json's ``default``)."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} in a reader state is not JSON-serializable")


def _restart_epoch(data: Any, epoch: int) -> None:
    """Position a reader (or Loader) at the first batch of ``epoch``."""
    if hasattr(data, "set_epoch"):
        data.set_epoch(epoch)
    elif hasattr(data, "num_workers"):  # recis.io.Loader: no worker position = epoch start
        data.load_state_dict(
            {"workers": [None] * data.num_workers, "next": 0, "epoch": epoch, "skipped": 0}
        )
