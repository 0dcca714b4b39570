"""Config -> a training or evaluation run on one process or N: what ``recis train`` and
``recis eval`` do, for every launcher.

One path: the launcher only decides the trainer's context. ``none`` is this one process
(the plain model, single-process checkpoints ``step-00000100``); under torchrun or
horovodrun each rank reads its own share of the data (``data.batch_size`` rows per rank and
step), holds its shards of the embedding tables, steps in lockstep with the others and
writes sharded checkpoints ``step-N``. With ``train.checkpoint_every`` set, a run restarted
by ``torchrun --max-restarts`` resumes from the latest one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch.distributed as dist
import yaml

from recis.config import RunConfig, to_dict
from recis.errors import ConfigError, OutputError
from recis.models import build_model
from recis.optim.spec import check_sharded_tables
from recis.train import Trainer
from recis.train.checkpoint import CheckpointManager, resolve_resume
from recis.train.runlog import standalone_eval_split
from recis.train.runner import (
    Info,
    claim_run_dir,
    eval_path,
    prepare_data,
    readers,
    report,
    seed_everything,
    set_threads,
    write_output,
)
from recis.train.runner import build as build_one

from . import checkpoint as dcp_checkpoint
from .context import DistContext, detect_launcher, init_distributed, shutdown
from .hashed import shard_hashed
from .sharding import shard_model
from .trainer import DistributedTrainer

T = TypeVar("T")


def build(cfg: RunConfig, ctx: DistContext) -> tuple[Trainer, Info | None]:
    """Data, model and trainer of this process (the model sharded over the ranks of a
    distributed run), and the synthetic data's info when the config generates data."""
    if not ctx.is_distributed:
        return build_one(cfg)
    # an optimizer the sharded tables cannot run is refused before any data is touched
    check_sharded_tables(cfg, ctx.device)
    set_threads(cfg.threads, ctx.local_size)
    seed_everything(cfg.seed)  # same seed everywhere: identical dense init before DDP
    if ctx.rank == 0:
        prepare_data(cfg)  # generates synthetic data once, not once per rank
    dist.barrier()
    train_path, eval_path_, info = prepare_data(cfg)
    train, evals = readers(cfg, train_path, eval_path_, rank=ctx.rank, world_size=ctx.world_size)
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
    trainer = DistributedTrainer(sharded, train, evals, cfg.train, ctx, run_dir=cfg.run_dir)
    return trainer, info


def _launcher(cfg: RunConfig, launcher: str | None) -> str:
    """The launcher of this run: the one given, else the config's; ``auto`` detected."""
    chosen = launcher or cfg.distributed.launcher
    return detect_launcher() if chosen == "auto" else chosen


def train(
    cfg: RunConfig,
    launcher: str | None = None,
    resume: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any] | None:
    """Train ``cfg`` on this process; the (global) eval result on rank 0, None elsewhere.

    ``resume``: a run directory (continue from its newest checkpoint, which must be whole: a
    broken one is refused by name) or one checkpoint folder ``RUN_DIR/checkpoints/step-N``
    (continue from it; newer checkpoints are set aside as ``NAME.superseded``): model,
    optimizer, step, epoch and every rank's reader position. Training writes into that run
    directory. A run torchrun restarted (``--max-restarts``) continues from the dead
    attempt's newest checkpoint. Without ``resume``, a run directory that holds a previous
    run is refused unless ``overwrite`` (then that run's outputs, and nothing else, go).
    """
    if resume is not None and overwrite:
        raise ConfigError("--resume and --overwrite: pick one")
    launcher = _launcher(cfg, launcher)
    checkpoint = None
    if resume is not None:
        run_dir, checkpoint = resolve_resume(resume)
        cfg.run_dir = str(run_dir)
    run_dir = Path(cfg.run_dir)
    restarted = launcher != "none" and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    _check_run_dir(run_dir, launcher, resume is not None, overwrite, restarted)

    def body(ctx: DistContext) -> tuple[dict[str, Any], Path | None]:
        if ctx.is_main:
            if ctx.is_distributed and overwrite and not restarted:
                claim_run_dir(run_dir, resume=False, overwrite=True)
            run_dir.mkdir(parents=True, exist_ok=True)
            write_output(run_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
        trainer, info = build(cfg, ctx)
        checkpoints = CheckpointManager(run_dir / "checkpoints")
        start = checkpoints.latest() if restarted else checkpoint
        if start is not None:
            trainer.resume(start)
            if ctx.is_main:
                print(f"resumed from {start} at step {trainer.step}", flush=True)
                for p in [] if restarted else checkpoints.set_aside_after(trainer.step):
                    print(f"set aside (newer than the resumed checkpoint): {p}", flush=True)
        return report(trainer.fit(), info), trainer.final_path

    ctx, (result, final) = _on_ranks(cfg, launcher, body)
    if not ctx.is_main:
        return None
    try:
        write_output(run_dir / "eval.json", json.dumps(result, indent=2) + "\n")
    except OutputError as err:
        if final is not None:
            raise OutputError(f"{err} (the trained model is saved in {final})") from None
        raise
    return result


def _check_run_dir(
    run_dir: Path, launcher: str, resume: bool, overwrite: bool, restarted: bool
) -> None:
    """A run directory holding a previous run is refused unless resuming or overwriting.

    One process claims it at once (its previous outputs removed with ``overwrite``). Under a
    launcher every rank checks before the process group forms, so before any rank writes,
    and rank 0 removes the old outputs later; a restart continues the dead attempt's run,
    whose outputs are expected there."""
    if launcher == "none":
        claim_run_dir(run_dir, resume, overwrite)
    elif not restarted and not resume and not overwrite:
        claim_run_dir(run_dir, resume=False, overwrite=False)


def evaluate(
    cfg: RunConfig, checkpoint: str | Path, launcher: str | None = None
) -> dict[str, Any] | None:
    """``recis eval --checkpoint DIR``: the model's weights from ``checkpoint`` (a
    single-process one, or a distributed one saved at any world size) evaluated on every
    process's share of the config's eval data; the (global) metrics on rank 0, None
    elsewhere."""
    path = Path(checkpoint)

    def body(ctx: DistContext) -> dict[str, Any]:
        trainer, info = build(cfg, ctx)
        evals = eval_path(cfg) or "holdout"  # data.holdout: the training rows' tail
        if trainer.eval_data is None:
            raise ConfigError(
                "data.eval: recis eval needs eval data (or data.holdout, or data.synthetic)"
            )
        if not ctx.is_distributed and (path / ".metadata").exists():
            # hashed tables are saved by id (any world size): their one-process sharded form
            # reads that layout and looks up like the plain collection
            shard_hashed(trainer.model)
            meta = dcp_checkpoint.load(path, trainer.model)
        else:  # the weights only: optimizer and reader state do not matter to an evaluation
            meta = trainer.load_weights(path)
        trainer.step = int(meta.get("step", 0))
        # its own split: logged as "eval" at the checkpoint's step, it would replace the
        # training's record of that step in the run's history (read_records keeps one)
        return report(trainer.evaluate(split=standalone_eval_split(evals)), info)

    ctx, result = _on_ranks(cfg, _launcher(cfg, launcher), body)
    return result if ctx.is_main else None


def _on_ranks(
    cfg: RunConfig, launcher: str, body: Callable[[DistContext], T]
) -> tuple[DistContext, T]:
    """Join the process group (none for launcher ``none``), run ``body`` on this process,
    leave the group. The body's trainer (whose DDP holds the process group) is released
    when it returns, before the group is destroyed
    (:func:`~recis.distributed.context.shutdown`)."""
    ctx = init_distributed(launcher, cfg.device, cfg.distributed.backend)
    try:
        result = body(ctx)
    except BaseException:
        # no barrier on the way out: a peer may be dead, and torchrun restarts us anyway
        if dist.is_initialized():
            dist.destroy_process_group()
        raise
    shutdown(ctx)
    return ctx, result
