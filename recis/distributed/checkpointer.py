"""The trainer's checkpoints in a sharded run: :mod:`recis.distributed.checkpoint` (DCP)
folders ``step-N``, written by every rank, loadable at any world size."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist

from recis.train.checkpoint import link_checkpoint
from recis.train.checkpointer import Checkpointer, TrainerState
from recis.train.state import rng_state_json, set_rng_state_json

from . import checkpoint as dcp_checkpoint
from .context import DistContext


class ShardedCheckpointer(Checkpointer):
    """Sharded checkpoints of a :class:`~recis.train.Trainer` on every rank (collective).

    The model and its CombinedOptimizer go through DCP; step, epoch, LR schedule, objective
    and callbacks into ``meta.json``; each rank's reader position and RNG states into
    ``ranks.json``.

    Args:
        directory: the checkpoints folder (``run_dir/checkpoints``).
        ctx: this process's :class:`DistContext`.
    """

    def __init__(self, directory: Path, ctx: DistContext) -> None:
        super().__init__(directory)
        self.ctx = ctx

    def step_name(self, step: int) -> str:
        return f"step-{step}"

    def save(self, trainer: TrainerState, name: str | None = None) -> Path | None:
        return dcp_checkpoint.save(
            self.path(trainer.step, name),
            trainer.model,
            trainer.optimizers[0],
            trainer.progress_state(),
            rank_state=self._rank_state(trainer),
        )

    def _rank_state(self, trainer: TrainerState) -> dict[str, Any]:
        """What differs per rank: the reader's position (exact resume) and RNG states."""
        out: dict[str, Any] = {"rng": rng_state_json()}
        if trainer.pipeline.resumable:
            position = trainer.pipeline.position()
            out["data"] = json.loads(json.dumps(position, default=_json_number))
        return out

    def resume(self, trainer: TrainerState, path: Path) -> dict[str, Any]:
        """Model, optimizer, step, epoch, LR schedule and this rank's reader position from a
        checkpoint saved at any world size.

        At the world size it was saved with, every rank continues at the exact row after its
        last trained batch. At another world size the model and optimizer reshard, but reader
        positions cannot map rank to rank (each rank's share of the rows changes): the
        checkpoint's epoch restarts from its first batch, and the rank-0 log says so.
        """
        meta = dcp_checkpoint.load(path, trainer.model, trainer.optimizers[0])
        trainer.restore_progress(meta)
        pipeline = trainer.pipeline
        mine = dcp_checkpoint.load_rank_state(path, self.ctx.rank, self.ctx.world_size)
        if mine is not None:
            set_rng_state_json(mine["rng"], f"{path}/ranks.json")
            if "data" in mine:
                pipeline.load_position(mine["data"])
        elif pipeline.resumable:
            pipeline.restart_epoch(trainer.epoch)
            if self.ctx.is_main:
                saved = int(meta.get("world_size", 1))
                why = (
                    f"saved by {saved} ranks, this run has {self.ctx.world_size}: reader "
                    "positions do not map across world sizes"
                    if saved != self.ctx.world_size
                    else "it holds no reader positions"
                )
                print(
                    f"{path}: {why}; epoch {trainer.epoch} restarts from its first batch "
                    f"(its rows trained on before step {trainer.step} are read again)",
                    flush=True,
                )
        return meta

    def load_weights(self, trainer: TrainerState, path: Path) -> dict[str, Any]:
        return dcp_checkpoint.load(path, trainer.model)

    def link(self, source: Path, name: str) -> Path | None:
        """Made by rank 0 and collective: the sharded checkpoint loads at any world size or
        unsharded, so ``best`` / ``final`` are the same folder for every rank."""
        path = link_checkpoint(source, name) if self.ctx.is_main else None
        if dist.is_initialized():
            dist.barrier()
        return path if path is not None else source.parent / name


def _json_number(value: Any) -> Any:
    """numpy scalars in reader states -> Python numbers (json's ``default``)."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} in a reader state is not JSON-serializable")
