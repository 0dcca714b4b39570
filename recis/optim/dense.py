"""Dense optimizers, learning-rate schedules, and the sparse/dense parameter split.

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

from recis.config import OptimizerConfig, ScheduleConfig, SparseOptimizerConfig

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


def dense_optimizer(params: list[nn.Parameter], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    kinds = {
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
        "adagrad": torch.optim.Adagrad,
        "sgd": torch.optim.SGD,
    }
    return kinds[cfg.name](params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def sparse_optimizer(
    params: list[nn.Parameter], cfg: SparseOptimizerConfig
) -> torch.optim.Optimizer:
    """A torch optimizer for embedding-collection weights the engine does not update itself."""
    if cfg.name in ("adagrad", "rowwise_adagrad"):
        return torch.optim.Adagrad(params, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay)


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
