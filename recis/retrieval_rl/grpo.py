"""Retrieval-GRPO: group relative policy optimization over each query's retrieved items.

Our reading of Retrieval-GRPO (arXiv 2511.13885): for a query ``q`` the current model
retrieves its top ``K`` items from the whole pool; those items are one GRPO group. The
policy is the softmax of the query's similarity to them,
``pi(i | q) = softmax_i(<u_q, v_i> / T)`` over ``i`` in the group. Each item's reward ``r_i``
(:mod:`recis.retrieval_rl.rewards`) becomes a group-normalised advantage
``A_i = (r_i - mean_g r) / (std_g r + eps)``, and the clipped surrogate of PPO/GRPO,
``L = -mean_i min(rho_i A_i, clip(rho_i, 1 - e, 1 + e) A_i) + beta KL_i``, with
``rho_i = pi(i|q) / pi_old(i|q)`` and the k3 estimator ``KL_i = exp(d_i) - d_i - 1``,
``d_i = log pi_ref(i|q) - log pi(i|q)`` against the starting (InfoNCE) model, is mixed with
the InfoNCE loss: ``loss = L + w_nce * InfoNCE``. Every item of the group counts once (the
paper's sampling of the group is the top-K retrieval, not a draw from ``pi``).

Shapes: ``Q`` queries, ``K`` group size (items per query), ``D`` dim.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from recis.models.two_tower import in_batch_softmax_loss


class DualEncoder(Protocol):
    """What the trainer needs of a retrieval model: rows in, unit vectors out."""

    def encode_queries(self, rows: torch.Tensor) -> torch.Tensor: ...  # [B] -> [B, D]

    def encode_items(self, rows: torch.Tensor) -> torch.Tensor: ...  # [B] -> [B, D]


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``rewards [Q, K]`` -> ``(r - mean) / (std + eps)`` per row (population std); a group
    whose items all earn the same reward has zero advantage (no signal)."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=False)
    return (rewards - mean) / (std + eps)


def policy_logprobs(u: torch.Tensor, v: torch.Tensor, temperature: float) -> torch.Tensor:
    """``log softmax_k(<u_q, v_qk> / T)``: ``u [Q, D]``, ``v [Q, K, D]`` -> ``[Q, K]``."""
    return F.log_softmax(torch.einsum("qd,qkd->qk", u, v) / temperature, dim=1)


def clipped_loss(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    clip: float,
    logp_ref: torch.Tensor | None = None,
    beta: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO objective (to minimise) over ``[Q, K]`` log-probs and advantages.

    Any shape works (every element is one action, the mean is over all of them): LREM's RL
    stage (:mod:`recis.retrieval_rl.lrem_train`) passes its reasoning tokens ``[M]``, each
    with its sequence's advantage.

    Returns the loss and its parts: ``policy`` (minus the clipped surrogate), ``kl`` (k3 to
    the reference, 0 without one) and ``clipped`` (share of items whose ratio was clipped).
    """
    ratio = torch.exp(logp - logp_old)
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    policy = -surrogate.mean()
    kl = torch.zeros((), device=logp.device)
    if logp_ref is not None and beta > 0:
        d = logp_ref - logp
        kl = (torch.exp(d) - d - 1).mean()
    clipped = ((ratio - 1).abs() > clip).float().mean()
    loss = policy + beta * kl
    return loss, {
        "policy": float(policy.detach()),
        "kl": float(kl.detach()),
        "clipped": float(clipped),
    }


def infonce_loss(
    model: DualEncoder, queries: torch.Tensor, positives: torch.Tensor, temperature: float
) -> torch.Tensor:
    """In-batch softmax of ``(queries [B], positives [B])`` rows; another row's copy of the
    same item is masked, not a negative."""
    u, v = model.encode_queries(queries), model.encode_items(positives)
    mask = positives[:, None] == positives[None, :]
    mask.fill_diagonal_(False)
    return in_batch_softmax_loss(u, v, temperature, mask=mask.to(u.device))


def group_items(model: DualEncoder, rows: torch.Tensor) -> torch.Tensor:
    """``rows [Q, K]`` pool rows -> ``[Q, K, D]``, each distinct item encoded once."""
    uniq, inverse = rows.unique(return_inverse=True)
    return model.encode_items(uniq)[inverse]
