"""Building blocks shared by the models."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Sequential):
    """Linear layers with ReLU between them.

    Shapes: ``[B, in_dim] -> [B, sizes[-1]]``.

    Args:
        in_dim: input width.
        sizes: output width of each layer.
        dropout: dropout after each hidden activation.
        last_activation: apply ReLU after the last layer too.
    """

    def __init__(
        self,
        in_dim: int,
        sizes: list[int],
        dropout: float = 0.0,
        last_activation: bool = True,
        device: torch.device | None = None,
    ) -> None:
        layers: list[nn.Module] = []
        for i, out in enumerate(sizes):
            layers.append(nn.Linear(in_dim, out, device=device))
            last = i == len(sizes) - 1
            if not last or last_activation:
                layers.append(nn.ReLU())
                if dropout and not last:
                    layers.append(nn.Dropout(dropout))
            in_dim = out
        super().__init__(*layers)
