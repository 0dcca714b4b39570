"""Learning-rate schedules and the sparse/dense parameter split (the optimizers themselves
are built by :mod:`recis.optim.spec`).

Parameters updated inside backward (the embedding engine's tables carry the
attribute ``_in_backward_optimizers``, as torchrec's
``apply_optimizer_in_backward`` sets it) are never given to a torch
optimizer. Plain torchrec embedding-collection parameters get the sparse
optimizer; everything else gets the dense one.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingCollection

from recis.config import ScheduleConfig

_SPARSE_MODULES = (EmbeddingBagCollection, EmbeddingCollection)


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(sparse, dense): embedding-collection parameters vs the rest; in-backward ones in neither."""
    in_backward = {id(p) for p in model.parameters() if hasattr(p, "_in_backward_optimizers")}
    sparse_ids = set()
    sparse = []
    for module in model.modules():
        if isinstance(module, _SPARSE_MODULES):
            for p in module.parameters():
                if id(p) not in sparse_ids and id(p) not in in_backward:
                    sparse_ids.add(id(p))
                    sparse.append(p)
    dense = [
        p
        for p in model.parameters()
        if id(p) not in sparse_ids and id(p) not in in_backward and p.requires_grad
    ]
    return sparse, dense


def lr_factor(cfg: ScheduleConfig, step: int, total_steps: int | None) -> float:
    """Multiplier of the base learning rate at optimizer ``step`` (0-based).

    Linear warmup from ``1/warmup`` to 1 over ``warmup_steps``, then constant,
    or cosine / linear decay to ``min_lr_ratio`` at ``total_steps``.
    """
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    total = cfg.total_steps or total_steps
    if cfg.name == "constant" or not total:
        return 1.0
    span = max(total - cfg.warmup_steps, 1)
    frac = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    floor = cfg.min_lr_ratio
    if cfg.name == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * frac))
    return floor + (1.0 - floor) * (1.0 - frac)


def build_schedule(
    opt: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int | None
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepping once per optimizer step (its state goes into checkpoints)."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(cfg, step, total_steps))
