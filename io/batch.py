"""The unit of data between readers, models and the trainer."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor


@dataclass
class Batch:
    """One mini-batch.

    Shapes: ``B`` rows, ``Dd`` dense features.

    Args:
        sparse: ids per sparse feature, keys in schema order (``B`` rows each).
        dense: ``[B, Dd]`` float32 (``Dd`` may be 0).
        labels: task name -> ``[B]`` float32.
        text: name -> token ids ``[B, T]`` (and ``<name>_mask``), when the schema has text.
        extras: other per-row tensors a model or metric asks for (e.g. a GAUC group id).
    """

    sparse: KeyedJaggedTensor
    dense: torch.Tensor
    labels: dict[str, torch.Tensor]
    text: dict[str, torch.Tensor] = field(default_factory=dict)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.dense.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        def move(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: v.to(device, non_blocking=non_blocking) for k, v in d.items()}

        return Batch(
            sparse=self.sparse.to(torch.device(device), non_blocking=non_blocking),
            dense=self.dense.to(device, non_blocking=non_blocking),
            labels=move(self.labels),
            text=move(self.text),
            extras=move(self.extras),
        )

    def pin_memory(self) -> Batch:
        def pin(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: v.pin_memory() for k, v in d.items()}

        return dataclasses.replace(
            self,
            sparse=self.sparse.pin_memory(),
            dense=self.dense.pin_memory(),
            labels=pin(self.labels),
            text=pin(self.text),
            extras=pin(self.extras),
        )
