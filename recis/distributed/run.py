"""Config -> a multi-process run: what ``recis train --launcher torchrun|horovod`` does.

Each rank reads its own share of the data (``data.batch_size`` rows per rank and step),
holds its shards of the embedding tables, and steps in lockstep with the others.
With ``distributed.checkpoint_every`` set, a sharded checkpoint is written every N
steps and a restarted run (``torchrun --max-restarts``) resumes from the latest one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml

from recis.config import RunConfig, to_dict
from recis.io import ParquetReader
from recis.io.batch import Batch
from recis.models import build_model

from . import checkpoint as dcp_checkpoint
from .context import DistContext, init_distributed, shutdown
from .sharding import shard_model
from .trainer import DistributedTrainer


class RankShard:
    """Batches ``rank, rank + W, rank + 2W, ...`` of a reader that every rank reads whole.

    The stand-in for readers without ``rank``/``world_size`` arguments: correct (every
    batch goes to exactly one rank, and ranks get equal counts but for the last group)
    but each rank decodes all files.
    """

    def __init__(self, data: Iterable[Batch], rank: int, world_size: int) -> None:
        self.data, self.rank, self.world_size = data, rank, world_size

    def __iter__(self) -> Iterator[Batch]:
        for i, batch in enumerate(self.data):
            if i % self.world_size == self.rank:
                yield batch


def make_reader(paths: Any, cfg: RunConfig, batch_size: int, shuffle: bool, ctx: DistContext):
    """This rank's reader over ``paths``."""
    schema = cfg.data.schema_
    try:  # readers that shard by rank themselves (file/row-group assignment)
        return ParquetReader(
            paths,
            schema,
            batch_size,
            shuffle=shuffle,
            seed=cfg.seed,
            rank=ctx.rank,
            world_size=ctx.world_size,
        )
    except TypeError:
        reader = ParquetReader(paths, schema, batch_size, shuffle=shuffle, seed=cfg.seed)
        return RankShard(reader, ctx.rank, ctx.world_size)


class _SkipFirst:
    """Skips the first ``n`` batches of the first pass (resume at a step)."""

    def __init__(self, data: Iterable[Batch], n: int) -> None:
        self.data, self.n = data, n

    def __iter__(self) -> Iterator[Batch]:
        n, self.n = self.n, 0
        for i, batch in enumerate(self.data):
            if i >= n:
                yield batch


def build(cfg: RunConfig, ctx: DistContext) -> DistributedTrainer:
    """Data, sharded model and trainer for this rank."""
    from recis.train.runner import prepare_data, seed_everything

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)  # same seed everywhere: identical dense init before DDP
    if ctx.rank == 0:
        prepare_data(cfg)  # generates synthetic data once, not once per rank
    if ctx.is_distributed:
        dist.barrier()
    train_path, eval_path, _ = prepare_data(cfg)
    train = make_reader(train_path, cfg, cfg.data.batch_size, cfg.data.shuffle, ctx)
    evals = None
    if eval_path is not None:
        evals = make_reader(
            eval_path, cfg, cfg.data.eval_batch_size or cfg.data.batch_size, False, ctx
        )
    model = build_model(cfg.model, cfg.data.schema_, ctx.device)
    d = cfg.distributed
    sharded = shard_model(
        model,
        ctx,
        cfg.train.sparse_optimizer,
        default=d.default_sharding,
        per_table=dict(d.sharding),
        data_parallel_dense=ctx.launcher != "horovod",
    )
    return DistributedTrainer(sharded, train, evals, cfg.train, ctx, run_dir=cfg.run_dir)


def train(cfg: RunConfig, launcher: str | None = None) -> dict[str, Any] | None:
    """Train ``cfg`` on this rank; returns the global eval result on rank 0, None elsewhere."""
    ctx = init_distributed(
        launcher or cfg.distributed.launcher, cfg.device, cfg.distributed.backend
    )
    try:
        run_dir = Path(cfg.run_dir)
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        trainer = build(cfg, ctx)
        every = cfg.distributed.checkpoint_every
        if every:
            _enable_periodic_checkpoints(trainer, every)
            last = dcp_checkpoint.latest(run_dir / "checkpoints")
            if last is not None:
                trainer.load(last)
                trainer.train_data = _SkipFirst(trainer.train_data, trainer.step)
                if ctx.is_main:
                    print(f"resumed from {last} at step {trainer.step}", flush=True)
        result = trainer.fit()
    except BaseException:
        # no barrier on the way out: a peer may be dead, and torchrun restarts us anyway
        if dist.is_initialized():
            dist.destroy_process_group()
        raise
    shutdown(ctx)
    if not ctx.is_main:
        return None
    (run_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _enable_periodic_checkpoints(trainer: DistributedTrainer, every: int) -> None:
    """Save ``step-<N>`` every ``every`` steps (all ranks at the same step: it is collective)."""
    step_once = trainer.train_step

    def train_step(batch: Batch) -> dict[str, float]:
        out = step_once(batch)
        if trainer.step % every == 0:
            trainer.save(f"step-{trainer.step}")
        return out

    trainer.train_step = train_step  # type: ignore[method-assign]
