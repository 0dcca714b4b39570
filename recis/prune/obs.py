"""Optimal Brain Surgeon on plain tensors: the math of SlimGPT (arXiv 2412.18110).

A linear map ``y = W x`` (``W [out, in]``) is pruned by removing input columns (attention
heads of the output projection, FFN channels of the down projection). With the layer
Hessian ``H = 2 X^T X`` of its inputs ``X [n, in]``, removing the columns ``Q`` costs

    err(Q) = tr(W[:, Q] ([H^-1]_QQ)^-1 W[:, Q]^T)     (= 2 ||X dW^T||^2 after the update)

and the remaining columns absorb the loss through the OBS update

    W <- W - W[:, Q] ([H^-1]_QQ)^-1 [H^-1]_Q,:        (one column q: -W[:, q] / [H^-1]_qq [H^-1]_q,:)
    H^-1 <- H^-1 - [H^-1]_:,Q ([H^-1]_QQ)^-1 [H^-1]_Q,:

Every function works on ``G`` groups at once (``W [G, out, in]``, ``H [G, in, in]``): HHFT's
heterogeneous layers have one weight per token block, the same heads in every block, so a
head's error is summed over the groups while each group gets its own update. A plain layer
is ``G = 1``. The math runs in float64.

Head errors of all heads at once (grouped Cholesky): ``[H^-1]_QQ = L L^T`` for each head's
diagonal block (one batched Cholesky), ``err = ||L^-1 W[:, Q]^T||_F^2``.
"""

from __future__ import annotations

import math

import torch

from recis.errors import ConfigError


class HessianAccumulator:
    """Running ``H = 2 X^T X / n`` of a layer's inputs, per group.

    Args:
        groups: ``G``.
        dim: input width ``in``.

    ``add(x)`` takes ``x [G, n, in]`` (``n`` rows of every group), ``add(x, group=g)`` the
    rows ``x [n, in]`` of group ``g`` alone (padded rows already removed).
    """

    def __init__(self, groups: int, dim: int) -> None:
        self.h = torch.zeros(groups, dim, dim, dtype=torch.float64)
        self.rows = [0] * groups

    def add(self, x: torch.Tensor, group: int | None = None) -> None:
        if group is None:
            for g in range(x.shape[0]):
                self.add(x[g], g)
            return
        x = x.detach().to(torch.float64)
        n = x.shape[0]
        if n == 0:
            return
        total = self.rows[group] + n
        # a running mean keeps H on the scale of one row, so damping is relative to it
        h = self.h[group]
        h.mul_(self.rows[group] / total).add_(x.T @ x, alpha=2.0 / total)
        self.rows[group] = total


def damped_inverse(h: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """``(H + damp * mean(diag H) I)^-1`` per group: ``[G, in, in]`` float64.

    A column that never saw a non-zero input (dead channel) gets ``diag = 1``: its removal
    is then free and the inverse exists (as GPTQ/SparseGPT do).
    """
    if damp < 0:
        raise ConfigError(f"prune.damp: {damp} must be >= 0")
    h = h.to(torch.float64).clone()
    diag = torch.diagonal(h, dim1=-2, dim2=-1)
    dead = diag <= 0
    diag[dead] = 1.0
    mean = diag.mean(-1, keepdim=True)
    diag.add_(damp * mean)
    return torch.cholesky_inverse(torch.linalg.cholesky(h))


def _take_block(hinv: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``[H^-1]_QQ`` for index sets ``idx [G, K, s]`` (``K`` sets of ``s`` columns per group)
    -> ``[G, K, s, s]``."""
    g = torch.arange(hinv.shape[0])[:, None, None, None]
    return hinv[g, idx[..., :, None], idx[..., None, :]]


def block_errors(w: torch.Tensor, hinv: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """OBS error of removing each column set, by grouped Cholesky: ``[G, K]``.

    ``w [G, out, in]``, ``hinv [G, in, in]``, ``idx [G, K, s]`` (column sets, e.g. the
    ``s = head_dim`` columns of each of ``K`` heads).
    """
    w, hinv = w.to(torch.float64), hinv.to(torch.float64)
    chol = torch.linalg.cholesky(_take_block(hinv, idx))  # [G, K, s, s]
    g = torch.arange(w.shape[0])[:, None, None]
    wq = w.transpose(1, 2)[g, idx]  # [G, K, s, out] = W[:, Q]^T
    z = torch.linalg.solve_triangular(chol, wq, upper=False)
    return z.pow(2).sum((-2, -1))


def column_errors(w: torch.Tensor, hinv: torch.Tensor) -> torch.Tensor:
    """OBS error of removing each single column: ``sum_o W[o, j]^2 / [H^-1]_jj``, ``[G, in]``."""
    diag = torch.diagonal(hinv.to(torch.float64), dim1=-2, dim2=-1)
    return w.to(torch.float64).pow(2).sum(1) / diag


def obs_remove(
    w: torch.Tensor, hinv: torch.Tensor, cols: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove columns ``cols [G, k]`` jointly with the OBS update; returns ``(W, H^-1)``.

    The removed columns of the returned ``W`` are zero; rows and columns ``cols`` of the
    returned ``H^-1`` are zero too (they take no further part). Shapes as the inputs, float64.
    """
    w, hinv = w.to(torch.float64).clone(), hinv.to(torch.float64).clone()
    for g in range(w.shape[0]):  # G is a handful of token blocks: a loop reads better
        q = cols[g]
        rows = hinv[g, q]  # [k, in] = [H^-1]_Q,:
        solve = torch.linalg.solve(rows[:, q], rows)  # ([H^-1]_QQ)^-1 [H^-1]_Q,:
        w[g] -= w[g][:, q] @ solve
        hinv[g] -= rows.T @ solve
        w[g][:, q] = 0.0
        hinv[g][q] = 0.0
        hinv[g][:, q] = 0.0
    return w, hinv


def kept(total: int, removed: torch.Tensor) -> torch.Tensor:
    """The sorted indices in ``range(total)`` not in ``removed [G, k]``: ``[G, total - k]``."""
    mask = torch.ones(removed.shape[0], total, dtype=torch.bool)
    mask.scatter_(1, removed, False)
    return torch.stack([torch.nonzero(m).squeeze(1) for m in mask])


def head_columns(heads: int, head_dim: int, groups: int = 1) -> torch.Tensor:
    """Column sets of ``heads`` contiguous heads: ``[G, heads, head_dim]``."""
    cols = torch.arange(heads * head_dim).reshape(heads, head_dim)
    return cols.expand(groups, -1, -1).clone()


def prune_heads(
    w: torch.Tensor,
    hinv: torch.Tensor,
    head_dim: int,
    remove: int,
    update: bool = True,
    batch_fraction: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched greedy head pruning: returns ``(removed_heads [remove], W)``.

    Each round scores every remaining head (grouped Cholesky, summed over groups), removes
    the ``ceil(batch_fraction * left)`` cheapest heads jointly (OBS update when ``update``)
    and rescores. ``W`` is the updated ``[G, out, in]`` with removed columns zeroed (the
    original weights with removed columns zeroed when not ``update``).
    """
    groups, _, width = w.shape
    heads = width // head_dim
    if not 0 <= remove < heads:
        raise ConfigError(f"prune: cannot remove {remove} of {heads} heads (one must stay)")
    w0 = w.to(torch.float64)
    work, hinv = w0.clone(), hinv.to(torch.float64)
    alive = list(range(heads))
    removed: list[int] = []
    while len(removed) < remove:
        left = remove - len(removed)
        cols = head_columns(heads, head_dim, groups)[:, alive]
        err = block_errors(work, hinv, cols).sum(0)  # [K]
        take = min(left, max(1, math.ceil(batch_fraction * left)))
        chosen = [alive[int(i)] for i in torch.argsort(err)[:take]]
        drop = head_columns(heads, head_dim, groups)[:, chosen].reshape(groups, -1)
        work, hinv = obs_remove(work, hinv, drop)
        removed += chosen
        alive = [h for h in alive if h not in chosen]
    out = work if update else _zero_heads(w0, removed, head_dim)
    return torch.tensor(sorted(removed), dtype=torch.long), out


def _zero_heads(w: torch.Tensor, removed: list[int], head_dim: int) -> torch.Tensor:
    w = w.clone()
    for h in removed:
        w[:, :, h * head_dim : (h + 1) * head_dim] = 0.0
    return w


def prune_channels(
    w: torch.Tensor,
    hinv: torch.Tensor,
    remove: int,
    update: bool = True,
    group_fraction: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FFN channel pruning with a dynamic group size: returns ``(removed [G, remove], W)``.

    Per group (its own channels): score each remaining channel by its single-column OBS
    error, remove the ``ceil(group_fraction * left)`` cheapest jointly (OBS update), rescore;
    the group shrinks as the target nears (large cheap steps first, exact small ones last).
    """
    groups, _, width = w.shape
    if not 0 <= remove < width:
        raise ConfigError(f"prune: cannot remove {remove} of {width} channels (one must stay)")
    w0 = w.to(torch.float64)
    work, hinv = w0.clone(), hinv.to(torch.float64)
    alive = torch.ones(groups, width, dtype=torch.bool)
    removed = torch.zeros(groups, 0, dtype=torch.long)
    while removed.shape[1] < remove:
        left = remove - removed.shape[1]
        take = min(left, max(1, math.ceil(group_fraction * left)))
        err = column_errors(work, hinv).masked_fill(~alive, math.inf)
        chosen = torch.argsort(err, dim=1)[:, :take]
        work, hinv = obs_remove(work, hinv, chosen)
        alive.scatter_(1, chosen, False)
        removed = torch.cat([removed, chosen], 1)
    removed = removed.sort(1).values
    if not update:
        work = w0.clone()
        work.scatter_(2, removed[:, None, :].expand(-1, w0.shape[1], -1), 0.0)
    return removed, work


def magnitude_heads(w: torch.Tensor, head_dim: int, remove: int) -> torch.Tensor:
    """The ``remove`` heads whose output-projection columns have the smallest L2 norm
    (summed over groups): ``[remove]`` sorted."""
    groups, out, width = w.shape
    norms = w.to(torch.float64).reshape(groups, out, width // head_dim, head_dim).pow(2)
    return torch.argsort(norms.sum((0, 1, 3)))[:remove].sort().values


def magnitude_channels(w: torch.Tensor, remove: int) -> torch.Tensor:
    """Per group, the ``remove`` channels with the smallest column L2 norm: ``[G, remove]``."""
    return torch.argsort(w.to(torch.float64).pow(2).sum(1), dim=1)[:, :remove].sort(1).values
