"""Config -> a multi-process run: what ``recis train --launcher torchrun|horovod`` does.

Each rank reads its own share of the data (``data.batch_size`` rows per rank and step),
holds its shards of the embedding tables, and steps in lockstep with the others.
With ``train.checkpoint_every`` set, a sharded checkpoint is written every N steps and
a run restarted by ``torchrun --max-restarts`` resumes from the latest one.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import yaml

from recis.config import RunConfig, to_dict
from recis.errors import CheckpointError, ConfigError
from recis.io import reader_from_config
from recis.models import build_model
from recis.optim.spec import check_sharded_tables

from . import checkpoint as dcp_checkpoint
from .context import DistContext, init_distributed, shutdown
from .sharding import shard_model
from .trainer import DistributedTrainer

T = TypeVar("T")


def build(cfg: RunConfig, ctx: DistContext) -> DistributedTrainer:
    """Data, sharded model and trainer for this rank."""
    from recis.train.runner import prepare_data, seed_everything

    # an optimizer the sharded tables cannot run is refused before any data is touched
    check_sharded_tables(cfg, ctx.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)  # same seed everywhere: identical dense init before DDP
    if ctx.rank == 0:
        prepare_data(cfg)  # generates synthetic data once, not once per rank
    if ctx.is_distributed:
        dist.barrier()
    train_path, eval_path, _ = prepare_data(cfg)
    shard = {"seed": cfg.seed, "rank": ctx.rank, "world_size": ctx.world_size}
    train = reader_from_config(cfg.data, train_path, train=True, **shard)
    evals = None
    if eval_path is not None:
        evals = reader_from_config(cfg.data, eval_path, train=False, **shard)
    # hashed tables: each rank allocates only its shard (shard_model builds them)
    model = build_model(cfg.model, cfg.data.schema_, ctx.device, template_tables=ctx.world_size > 1)
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


def train(
    cfg: RunConfig,
    launcher: str | None = None,
    resume: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any] | None:
    """Train ``cfg`` on this rank; returns the global eval result on rank 0, None elsewhere.

    With ``resume`` (a run directory, ``recis train --resume``: its newest sharded
    checkpoint, refused by name if broken; or one checkpoint folder
    ``RUN_DIR/checkpoints/step-N``), or when torchrun restarted the workers
    (``--max-restarts``), the run continues from that checkpoint: model, optimizer, step,
    epoch and every rank's reader position. Without it, a run directory that holds a
    previous run is refused unless ``overwrite`` (rank 0 then removes that run's outputs).
    """
    from recis.train.runner import claim_run_dir, write_output

    if resume is not None and overwrite:
        raise ConfigError("--resume and --overwrite: pick one")
    last = None
    if resume is not None:
        target = Path(resume)
        if target.parent.name == "checkpoints" and (target / ".metadata").exists():
            last, cfg.run_dir = target, str(target.parent.parent)
        else:
            cfg.run_dir = str(target)
            last = dcp_checkpoint.latest(target / "checkpoints")
            if last is None:
                raise CheckpointError(f"{resume}: no distributed checkpoint under checkpoints/")
    run_dir = Path(cfg.run_dir)
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    if not restarted:
        # every rank checks before the process group forms, so before any rank writes; a
        # restart continues the dead attempt's run, whose outputs are expected there
        _refuse_previous_run(run_dir, resume is not None or overwrite)

    def body(ctx: DistContext) -> dict[str, Any]:
        if ctx.is_main:
            if overwrite and not restarted:
                claim_run_dir(run_dir, resume=False, overwrite=True)
            run_dir.mkdir(parents=True, exist_ok=True)
            write_output(run_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
        trainer = build(cfg, ctx)
        start = last
        if restarted:
            start = dcp_checkpoint.latest(run_dir / "checkpoints")  # written by the dead attempt
        if start is not None:
            trainer.load(start)
            if ctx.is_main:
                print(f"resumed from {start} at step {trainer.step}", flush=True)
                if not restarted:
                    _set_aside_after(run_dir / "checkpoints", trainer.step)
        return trainer.fit()

    ctx, result = _on_ranks(cfg, launcher, body)
    if not ctx.is_main:
        return None
    write_output(run_dir / "eval.json", json.dumps(result, indent=2) + "\n")
    return result


def _refuse_previous_run(run_dir: Path, allowed: bool) -> None:
    """A run directory holding a previous run: refused unless resuming or overwriting."""
    from recis.train.runner import claim_run_dir

    if not allowed:
        claim_run_dir(run_dir, resume=False, overwrite=False)


def _set_aside_after(checkpoints: Path, step: int) -> None:
    """Checkpoints newer than the one resumed (explicitly, from an older one) renamed to
    ``NAME.superseded``: they are another future of this run."""
    for d in sorted(checkpoints.iterdir()) if checkpoints.is_dir() else []:
        if d.name.startswith(".") or d.name.endswith(".superseded") or not d.is_dir():
            continue
        try:
            saved = int(json.loads((d / "meta.json").read_text()).get("step", -1))
        except (OSError, ValueError, AttributeError):
            continue
        if saved > step:
            target = d.with_name(d.name + ".superseded")
            shutil.rmtree(target, ignore_errors=True)
            d.rename(target)
            print(f"set aside (newer than the resumed checkpoint): {target}", flush=True)


def evaluate(
    cfg: RunConfig, checkpoint: str | Path, launcher: str | None = None
) -> dict[str, Any] | None:
    """``recis eval --checkpoint DCP_DIR`` on this rank: the sharded model is loaded from the
    checkpoint (saved at any world size) and evaluated on every rank's share of the eval
    data; the global metrics come back on rank 0, None elsewhere."""

    def body(ctx: DistContext) -> dict[str, float]:
        trainer = build(cfg, ctx)
        if trainer.eval_data is None:
            raise ConfigError("data.eval: recis eval needs eval data (or data.synthetic)")
        meta = dcp_checkpoint.load(checkpoint, trainer.model)  # weights only: no optimizer
        trainer.step = int(meta.get("step", 0))
        from recis.train.runlog import standalone_eval_split
        from recis.train.runner import eval_path

        # its own split: as "eval" it would replace the training's record of this step
        return trainer.evaluate(split=standalone_eval_split(eval_path(cfg) or ""))

    ctx, result = _on_ranks(cfg, launcher, body)
    return result if ctx.is_main else None


def _on_ranks(
    cfg: RunConfig, launcher: str | None, body: Callable[[DistContext], T]
) -> tuple[DistContext, T]:
    """Join the process group, run ``body`` on this rank, leave the group. The body's
    trainer (whose DDP holds the process group) is released when it returns, before the
    group is destroyed (:func:`~recis.distributed.context.shutdown`)."""
    ctx = init_distributed(
        launcher or cfg.distributed.launcher, cfg.device, cfg.distributed.backend
    )
    try:
        result = body(ctx)
    except BaseException:
        # no barrier on the way out: a peer may be dead, and torchrun restarts us anyway
        if dist.is_initialized():
            dist.destroy_process_group()
        raise
    shutdown(ctx)
    return ctx, result
