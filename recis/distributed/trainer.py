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
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchrec.distributed.types import ShardedModule
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from recis.config import SparseOptimizerConfig, TrainConfig
from recis.io.batch import Batch
from recis.train import Trainer
from recis.train.trainer import dense_optimizer

from . import checkpoint as dcp_checkpoint
from .collectives import even_batches, gather_arrays, mean_over_ranks
from .context import DistContext, import_horovod


class _EvenBatches:
    """Re-iterable view of ``data`` where all ranks yield the same number of batches."""

    def __init__(self, data: Iterable[Batch]) -> None:
        self.data = data

    def __iter__(self) -> Iterator[Batch]:
        for batch, _ in even_batches(self.data):
            yield batch


def _sgd_like(cfg: SparseOptimizerConfig) -> Callable[[list[nn.Parameter]], torch.optim.Optimizer]:
    """torch optimizer for data-parallel (replicated) tables, matching the fused one."""
    if cfg.name == "sgd":
        return lambda ps: torch.optim.SGD(ps, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return lambda ps: torch.optim.Adagrad(ps, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay)


def build_optimizer(model: nn.Module, config: TrainConfig, ctx: DistContext) -> CombinedOptimizer:
    """Fused sparse optimizer + keyed dense optimizer(s) for a DistributedModelParallel model.

    Under Horovod the dense optimizers are wrapped in ``hvd.DistributedOptimizer`` (which
    all-reduces their gradients) and their parameters broadcast from rank 0.
    """
    table_params = {
        id(p) for m in model.modules() if isinstance(m, ShardedModule) for p in m.parameters()
    }
    dense: dict[str, nn.Parameter] = {}
    replicated_tables: dict[str, nn.Parameter] = {}
    for name, p in in_backward_optimizer_filter(model.named_parameters()):
        if not p.requires_grad:
            continue
        if id(p) in table_params:
            replicated_tables[name] = p  # data_parallel tables: not fused
        else:
            dense[name] = p

    def wrap(
        named: dict[str, nn.Parameter], make: Callable[[list[nn.Parameter]], torch.optim.Optimizer]
    ) -> KeyedOptimizer:
        if ctx.launcher != "horovod":
            return KeyedOptimizerWrapper(named, make)
        hvd = import_horovod()
        hvd.broadcast_parameters(named, root_rank=0)
        names = {id(p): n for n, p in named.items()}
        return KeyedOptimizerWrapper(
            named,
            lambda ps: hvd.DistributedOptimizer(
                make(ps), named_parameters=[(names[id(p)], p) for p in ps]
            ),
        )

    parts: list[tuple[str, KeyedOptimizer]] = []
    fused = getattr(model, "fused_optimizer", None)
    if fused is not None and fused.params:
        parts.append(("sparse", fused))
    if dense:
        parts.append(("dense", wrap(dense, lambda ps: dense_optimizer(ps, config.dense_optimizer))))
    if replicated_tables:
        parts.append(("tables", wrap(replicated_tables, _sgd_like(config.sparse_optimizer))))
    return CombinedOptimizer(parts)


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
        callbacks: list[Callable[[dict[str, Any]], None]] | None = None,
    ) -> None:
        if not ctx.is_main:
            config = dataclasses.replace(config, progress=False)
        super().__init__(
            model, _EvenBatches(train_data), eval_data, config, run_dir, ctx.device, callbacks
        )
        self.ctx = ctx
        self.optimizer = build_optimizer(model, config, ctx)
        self.optimizers = [self.optimizer]

    def train_step(self, batch: Batch) -> dict[str, float]:
        out = super().train_step(batch)
        return mean_over_ranks(out)  # the logged loss is the global batch's loss

    def _log(self, record: dict[str, Any]) -> None:
        if self.ctx.is_main:
            super()._log(record)

    @torch.no_grad()
    def predict(self, data: Iterable[Batch]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Probabilities and labels per task over every rank's ``data`` (rank order)."""
        self.model.eval()
        probs: dict[str, list[np.ndarray]] = {}
        labels: dict[str, list[np.ndarray]] = {}
        for batch, real in even_batches(data, pad=True):
            batch = batch.to(self.device)
            logits = self.model(batch)  # padded steps still run: the all-to-alls need everyone
            if not real:
                continue
            for t, logit in logits.items():
                probs.setdefault(t, []).append(torch.sigmoid(logit.float()).cpu().numpy())
                labels.setdefault(t, []).append(batch.labels[t].cpu().numpy())
        local_p = {t: np.concatenate(v) for t, v in probs.items()}
        local_y = {t: np.concatenate(v) for t, v in labels.items()}
        return gather_arrays(local_p), gather_arrays(local_y)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def save(self, name: str) -> Path | None:
        if self.run_dir is None:
            return None
        return dcp_checkpoint.save(
            self.run_dir / "checkpoints" / name, self.model, self.optimizer, {"step": self.step}
        )

    def load(self, path: str | Path) -> dict[str, Any]:
        """Restore model, optimizer and step from a checkpoint saved at any world size."""
        meta = dcp_checkpoint.load(path, self.model, self.optimizer)
        self.step = int(meta.get("step", 0))
        return meta
