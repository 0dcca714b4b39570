"""What the trainer needs from a model, as Protocols (no attribute probing): tasks named up
front, an objective of its own, tensors sized by content; and the model inside a wrapper."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torchrec.distributed.model_parallel import DistributedModelParallel

from recis.io.batch import Batch


@runtime_checkable
class DeclaresTasks(Protocol):
    """A model that names its task outputs up front (``forward`` returns ``{task: logits}``)."""

    tasks: list[str]


@runtime_checkable
class DefinesLoss(Protocol):
    """A model whose objective is not per-row BCE / MSE (in-batch softmax, regularizers)."""

    def loss(self, logits: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]: ...


@runtime_checkable
class ContentSized(Protocol):
    """A module whose saved tensors are sized by their content (the sharded hashed engine's
    live rows): it loads any row count, only the other dims must agree."""

    def prepare_load(self, sizes: dict[str, Any] | None, root: str = "") -> None: ...


def unwrapped(model: nn.Module) -> nn.Module:
    """The user's model inside a DDP / DistributedModelParallel wrapper."""
    if isinstance(model, DistributedDataParallel | DistributedModelParallel):
        return model.module
    return model
