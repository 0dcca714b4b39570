"""How a trainer's checkpoints are written and read: one interface, a single-process
implementation here and a sharded one (torch.distributed.checkpoint) in
:mod:`recis.distributed.checkpointer`.

The trainer decides *when* to save (every ``checkpoint_every`` steps, on a signal, a new
best, the end) and which checkpoints are ``best`` and ``final``; a :class:`Checkpointer`
decides *how*: file layout, names, which process writes, and what a resume restores.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

from recis.errors import CheckpointError

from .checkpoint import CheckpointManager, link_checkpoint, load_checkpoint, save_checkpoint
from .model_api import ContentSized
from .pipeline import TrainPipeline
from .state import set_rng_state
from .statecodec import reading_errors


def is_rank0() -> bool:
    """True outside a process group and on its rank 0 (a plain trainer inside one logs once)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class TrainerState(Protocol):
    """What a checkpointer reads from and restores into a trainer."""

    model: nn.Module
    optimizers: list[Any]
    pipeline: TrainPipeline
    step: int
    epoch: int

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any], source: str | Path = ...) -> None: ...

    def progress_state(self) -> dict[str, Any]: ...

    def restore_progress(self, state: dict[str, Any]) -> None: ...


class Checkpointer(ABC):
    """Writes and reads one run's checkpoints under ``directory`` (``run_dir/checkpoints``).

    Args:
        directory: the checkpoints folder.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    @abstractmethod
    def step_name(self, step: int) -> str:
        """The folder name of step ``step``'s numbered checkpoint."""

    def path(self, step: int, name: str | None = None) -> Path:
        """Where checkpoint ``name`` (default: the numbered one of ``step``) is."""
        return self.directory / (name or self.step_name(step))

    def clean_partial(self) -> None:
        """Remove (or put back) what crashed writers left (one process does it)."""
        if is_rank0():
            CheckpointManager(self.directory).clean_partial()

    @abstractmethod
    def save(self, trainer: TrainerState, name: str | None = None) -> Path | None:
        """Write the trainer's state as ``name`` (default: the numbered checkpoint of its
        step); the folder, or None where this process writes nothing."""

    @abstractmethod
    def resume(self, trainer: TrainerState, path: Path) -> dict[str, Any]:
        """Restore everything :meth:`save` wrote into ``trainer``; the checkpoint's meta."""

    @abstractmethod
    def load_weights(self, trainer: TrainerState, path: Path) -> dict[str, Any]:
        """Load only the model's weights from ``path``; its meta (step, epoch)."""

    @abstractmethod
    def link(self, source: Path, name: str) -> Path | None:
        """``directory/name`` as hard links to checkpoint ``source`` (``best``, ``final``)."""


class LocalCheckpointer(Checkpointer):
    """Single-process checkpoints (:func:`~recis.train.checkpoint.save_checkpoint`):
    ``step-00000100`` folders, the last ``keep_last`` kept, written by rank 0 only.

    Args:
        directory: the checkpoints folder.
        keep_last: numbered checkpoints kept.
        device: where loaded tensors go.
    """

    def __init__(self, directory: Path, keep_last: int, device: torch.device) -> None:
        super().__init__(directory)
        self.manager = CheckpointManager(self.directory, keep_last)
        self.device = device

    def step_name(self, step: int) -> str:
        return f"step-{step:08d}"

    def save(self, trainer: TrainerState, name: str | None = None) -> Path | None:
        if not is_rank0():
            return None
        meta = {"step": trainer.step, "epoch": trainer.epoch, "time": time.time()}
        if name is None:
            return self.manager.save(trainer.step, trainer.state_dict(), meta)
        return save_checkpoint(self.directory / name, trainer.state_dict(), meta)

    def resume(self, trainer: TrainerState, path: Path) -> dict[str, Any]:
        state, meta = load_checkpoint(path, map_location=self.device)
        with reading_errors(  # a state.json whose values are not what this trainer wrote
            lambda err: (
                f"{path}: not a trainer state this trainer can load: {type(err).__name__}: {err}"
            ),
            (KeyError, TypeError, ValueError, IndexError, AttributeError),
        ):
            trainer.load_state_dict(state, source=path)
        return meta

    def load_weights(self, trainer: TrainerState, path: Path) -> dict[str, Any]:
        state, meta = load_checkpoint(path, map_location=self.device)
        load_model_state(trainer.model, state.get("model"), path)
        return meta

    def link(self, source: Path, name: str) -> Path | None:
        return link_checkpoint(source, name) if is_rank0() else None


def load_trainer_state(trainer: TrainerState, state: dict[str, Any], source: str | Path) -> None:
    """Restore a single-process trainer state (:meth:`~recis.train.Trainer.state_dict`):
    weights, optimizers, progress, the reader's position and RNG states. A checkpoint of
    another model, dim or table layout is a CheckpointError naming ``source``."""
    load_model_state(trainer.model, state["model"], source)
    if len(state["optimizers"]) != len(trainer.optimizers):
        raise CheckpointError(
            f"{source}: checkpoint has {len(state['optimizers'])} optimizers, trainer has "
            f"{len(trainer.optimizers)}: the model's sparse/dense split changed"
        )
    for i, (opt, s) in enumerate(zip(trainer.optimizers, state["optimizers"])):
        try:
            opt.load_state_dict(s)
        except (ValueError, KeyError, RuntimeError, TypeError, IndexError) as err:
            raise CheckpointError(
                f"{source}: optimizer {i} does not match this model's: {err}"
            ) from None
    trainer.restore_progress(state)
    if "data" in state:
        trainer.pipeline.load_position(state["data"])
    if "rng" in state:
        set_rng_state(state["rng"])


def load_model_state(model: nn.Module, saved: Any, source: str | Path) -> None:
    """``model.load_state_dict(saved)`` after checking names and shapes: a mismatch is one
    CheckpointError naming the parameters, never a torch traceback. Modules whose saved
    tensors are sized by their content (:class:`~recis.train.model_api.ContentSized`) load
    any row count."""
    sized = tuple(f"{n}." for n, m in model.named_modules() if isinstance(m, ContentSized))
    check_model_state(model.state_dict(), saved, source, content_sized=sized)
    try:
        model.load_state_dict(saved)
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{source}: does not match the model: {first}") from None


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
