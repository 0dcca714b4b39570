"""Calibration of a relevance match score into per-task logits, with optional side inputs.

Shared by :class:`~recis.models.DeepBoW` and :class:`~recis.models.DenseRelevance`, so the
two relevance models differ only in how they match query and product:

``logit_t = a_t s + mlp_t(norm(x)) + prior_t + b_t``

* ``s [B]``: the model's match score (DeepBoW's shared-term sum, the dense tower's cosine);
* ``x [B, Dd]``: the schema's dense features (``Batch.dense``), e.g. the lexical match
  signals of :mod:`recis.io.lexical`, standardised by a batch norm without affine terms
  (running statistics at eval) and read by a one-hidden-layer MLP (``hidden = 0``: linear);
* ``prior_t [B]``: a query-independent product term computed by the model (DeepBoW: a learned
  weight per term of the product bag; dense tower: a linear read of the product embedding);
* ``a_t``, ``b_t``: learned per task ``t`` (one output per label of the schema).

Shapes: ``B`` batch, ``Dd`` dense width, ``N`` tasks.
"""

from __future__ import annotations

import torch
from torch import nn


class RelevanceHead(nn.Module):
    """Per-task calibration ``(s [B], x [B, Dd], prior [B, N]) -> logits [B, N]``.

    Args:
        tasks: number of outputs ``N``.
        dense_dim: width ``Dd`` of the dense inputs (0: none are read).
        hidden: hidden width of the dense MLP (0: a linear layer).
        dropout: dropout on the hidden layer.
        device: where parameters live.
    """

    def __init__(
        self,
        tasks: int,
        dense_dim: int,
        hidden: int = 16,
        dropout: float = 0.0,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((tasks,), 5.0, device=device))
        self.bias = nn.Parameter(torch.full((tasks,), -1.0, device=device))
        self.dense: nn.Module | None = None
        if dense_dim:
            layers: list[nn.Module] = [nn.BatchNorm1d(dense_dim, affine=False, device=device)]
            if hidden:
                layers += [
                    nn.Linear(dense_dim, hidden, device=device),
                    nn.ReLU(),
                    nn.Dropout(dropout),
                    nn.Linear(hidden, tasks, device=device),
                ]
            else:
                layers.append(nn.Linear(dense_dim, tasks, device=device))
            self.dense = nn.Sequential(*layers)

    def forward(
        self, s: torch.Tensor, x: torch.Tensor | None = None, prior: torch.Tensor | None = None
    ) -> torch.Tensor:
        logits = s[:, None] * self.scale + self.bias  # [B, N]
        if self.dense is not None and x is not None:
            logits = logits + self.dense(x.float()).to(logits.dtype)
        if prior is not None:
            logits = logits + prior
        return logits


__all__ = ["RelevanceHead"]
