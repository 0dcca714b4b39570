"""The trainer's distributed context: the same :class:`recis.train.Trainer` loop on a rank of
a sharded run.

:class:`DistributedTrainContext` is what differs across ranks:

- optimizers: the sharded tables update inside backward (fbgemm fused optimizer, exposed
  as ``model.fused_optimizer``); dense parameters get the configured torch optimizer,
  whose gradients DDP (torchrun) or ``hvd.DistributedOptimizer`` (Horovod) average;
- every rank runs the same number of steps (:class:`DistributedPipeline`), since every step
  is a collective;
- a step's losses and stop flag are averaged over ranks (started before backward);
- evaluation gathers all ranks' predictions and computes AUC / logloss once, globally;
- only rank 0 logs; checkpoints are written by all ranks with torch.distributed.checkpoint
  (:class:`~recis.distributed.checkpointer.ShardedCheckpointer`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recis.config import TrainConfig
from recis.io.batch import Batch
from recis.optim import dense_optimizer, split_parameters
from recis.train import Trainer
from recis.train.checkpointer import Checkpointer
from recis.train.context import Optimizers, TrainContext
from recis.train.pipeline import TrainPipeline

from .checkpointer import ShardedCheckpointer
from .collectives import even_batches, mean_over_ranks_async
from .context import DistContext
from .optim import build_optimizer  # optimizer construction: see recis/distributed/optim.py


class DistributedPipeline(TrainPipeline):
    """The training pipeline of one rank: every rank yields the same number of batches.

    When another rank ran out first, the rest of this rank's pass (at most a batch or two
    when no row is skipped: shards differ by one row at most) is read and dropped, so that
    this rank's reader, like the others', starts its next epoch on the next iteration
    instead of handing out the tail of the old one.
    """

    def _source(self) -> Iterator[Batch]:
        it = iter(self.data)
        for batch, _ in even_batches(it):
            yield batch
        for _ in it:  # the same rows are dropped whether or not the run was resumed
            pass

    def batches_per_epoch(self) -> int | None:
        return None  # the agreed count is known only at the epoch's end


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


class DistributedTrainContext(TrainContext):
    """A rank of a run sharded by :func:`~recis.distributed.shard_model`.

    Args:
        ctx: this process's :class:`DistContext`.
    """

    agreed_stops_only = True

    def __init__(self, ctx: DistContext) -> None:
        super().__init__(ctx.device)
        self.ctx = ctx
        self.is_main = ctx.is_main

    def train_config(self, config: TrainConfig) -> TrainConfig:
        return config if self.ctx.is_main else dataclasses.replace(config, progress=False)

    def pipeline(self, data: Iterable[Batch], model: nn.Module) -> TrainPipeline:
        return DistributedPipeline(data, model, self.device)

    def optimizers(self, model: nn.Module, config: TrainConfig) -> Optimizers:
        """One CombinedOptimizer (fused sparse, dense, replicated tables); the LR schedule
        and clipping act on its dense part's torch optimizer."""
        combined = build_optimizer(model, config, self.ctx)
        dense = dict(combined.optimizers).get("dense")
        if dense is None:  # no dense part to schedule: as in one process
            params = split_parameters(model)[1]
            return Optimizers([combined], dense_optimizer(params, config.dense_optimizer), params)
        # torchrec's KeyedOptimizerWrapper keeps the torch optimizer it wraps as _optimizer
        inner: torch.optim.Optimizer = dense._optimizer
        return Optimizers([combined], inner, list(dense.params.values()))

    def reduce_async(self, values: torch.Tensor) -> Callable[[], list[float]]:
        """The step's losses averaged over ranks: the global batch's, so every rank logs,
        checks for NaN and updates the multi-task objective with the same numbers. The
        all-reduce is started before backward and waited for after it, so it costs no
        extra synchronisation point."""
        return mean_over_ranks_async(values)

    def eval_batches(self, data: Iterable[Batch], model: nn.Module) -> Iterable[Batch]:
        return _PaddedEval(data, model, self.device)

    def checkpointer(self, run_dir: Path, config: TrainConfig) -> Checkpointer:
        return ShardedCheckpointer(run_dir / "checkpoints", self.ctx)


class DistributedTrainer(Trainer):
    """A :class:`~recis.train.Trainer` with a :class:`DistributedTrainContext`: a model sharded
    by :func:`~recis.distributed.shard_model` on this rank (nothing else differs).

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
        context = DistributedTrainContext(ctx)
        super().__init__(
            model, train_data, eval_data, config, run_dir, callbacks=callbacks, context=context
        )
        self.ctx = ctx
        self.optimizer = self.optimizers[0]  # the CombinedOptimizer

    def load(self, path: str | Path) -> dict[str, Any]:
        """:meth:`resume` (the name this class had): model, optimizer, step, epoch, LR
        schedule and this rank's reader position from a checkpoint of any world size."""
        return self.resume(path)
