"""Lazy row-wise Adam and AdamW for embedding tables (fbgemm has neither on CPU).

Only the rows a batch touches are updated, each with its own step count, so
on a row touched at every step the update equals ``torch.optim.Adam`` /
``torch.optim.AdamW`` on the dense table (bias corrections use the row's own
step). Untouched rows keep their weights and moments (no decay, unlike a dense
optimizer given a zero gradient).

State per table of ``R`` rows and dim ``D``: ``exp_avg`` and ``exp_avg_sq``
float32 ``[R, D]``, ``step`` float32 ``[R]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AdamHyper:
    """Hyper-parameters; ``decoupled`` selects AdamW's weight decay."""

    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled: bool = False


def adam_state(rows: int, dim: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Zero state for a table of ``rows x dim``."""
    return {
        "exp_avg": torch.zeros(rows, dim, device=device),
        "exp_avg_sq": torch.zeros(rows, dim, device=device),
        "step": torch.zeros(rows, device=device),
    }


@torch.no_grad()
def adam_update_rows(
    weight: torch.Tensor,
    state: dict[str, torch.Tensor],
    rows: torch.Tensor,
    grad: torch.Tensor,
    hp: AdamHyper,
) -> None:
    """Apply one Adam(W) step to ``weight[rows]``.

    Args:
        weight: ``[R, D]`` table (fp32 or fp16), updated in place.
        state: from :func:`adam_state`, updated in place.
        rows: int64 ``[U]`` distinct rows.
        grad: ``[U, D]`` gradient of those rows (duplicates already summed).
        hp: hyper-parameters.
    """
    g = grad.float()
    w = weight[rows].float()
    step = state["step"][rows] + 1
    state["step"][rows] = step
    if hp.weight_decay:
        if hp.decoupled:
            w.mul_(1 - hp.lr * hp.weight_decay)
        else:
            g = g.add(w, alpha=hp.weight_decay)
    m = state["exp_avg"][rows].mul_(hp.beta1).add_(g, alpha=1 - hp.beta1)
    v = state["exp_avg_sq"][rows].mul_(hp.beta2).addcmul_(g, g, value=1 - hp.beta2)
    state["exp_avg"][rows] = m
    state["exp_avg_sq"][rows] = v
    # same operation order as torch.optim.Adam's single-tensor path
    bc1 = 1 - hp.beta1 ** step.double()
    bc2 = 1 - hp.beta2 ** step.double()
    step_size = (hp.lr / bc1).float().unsqueeze(1)
    denom = (v.sqrt() / bc2.sqrt().float().unsqueeze(1)).add_(hp.eps)
    w.sub_(m / denom * step_size)
    weight[rows] = w.to(weight.dtype)
