"""What the trainer needs to know of the processes it runs in.

The trainer's loop is the same for one process and for the ranks of a distributed run; what
differs is gathered here: how a step's losses are reduced, which process logs, when a stop
signal may be acted on, how evaluation batches line up, which pipeline reads the training
batches, how optimizers are built and how checkpoints are written. :class:`TrainContext` is
one process; :class:`recis.distributed.trainer.DistributedTrainContext` is a rank of a distributed
run (collectives, sharded checkpoints), passed to the same :class:`~recis.train.Trainer`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recis.config import TrainConfig
from recis.io.batch import Batch

from .checkpointer import Checkpointer, LocalCheckpointer
from .pipeline import TrainPipeline


@dataclass
class Optimizers:
    """The optimizers a trainer steps, and the dense one the LR schedule and clipping act on.

    Attributes:
        all: stepped and zeroed after every optimizer step, saved in this order.
        dense: the dense parameters' optimizer (its LR follows ``train.schedule``).
        dense_params: what ``train.clip`` clips.
    """

    all: list[Any]
    dense: torch.optim.Optimizer
    dense_params: list[nn.Parameter]


class TrainContext:
    """One process: local reductions, plain checkpoints; the default of a
    :class:`~recis.train.Trainer`.

    Args:
        device: where the model is and batches go.
    """

    #: a stop signal is acted on only once every rank saw one (distributed runs)
    agreed_stops_only = False

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)

    #: whether this process logs (a plain trainer inside a process group logs on every rank;
    #: its checkpointer writes on rank 0)
    is_main = True

    def train_config(self, config: TrainConfig) -> TrainConfig:
        """The training options as this process uses them."""
        return config

    def pipeline(self, data: Iterable[Batch], model: nn.Module) -> TrainPipeline:
        """The pipeline reading ``data`` for training ``model``."""
        return TrainPipeline(data, model, self.device)

    def optimizers(self, model: nn.Module, config: TrainConfig) -> Optimizers | None:
        """The model's optimizers; None: the trainer's own (dense torch + sparse)."""
        return None

    def reduce_async(self, values: torch.Tensor) -> Callable[[], list[float]]:
        """A step's ``values`` (1-D) as floats, once the returned function is called (a
        distributed run averages them over ranks meanwhile, during backward)."""
        return values.tolist

    def eval_batches(self, data: Iterable[Batch], model: nn.Module) -> Iterable[Batch]:
        """The evaluation's batches of this process (a distributed run pads ranks to one count)."""
        return data

    def checkpointer(self, run_dir: Path, config: TrainConfig) -> Checkpointer:
        """How this run's checkpoints under ``run_dir/checkpoints`` are written and read."""
        return LocalCheckpointer(run_dir / "checkpoints", config.keep_last, self.device)
