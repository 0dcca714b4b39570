"""Building blocks of the dual-tower retrieval model (:mod:`recis.models.two_tower`).

The sampled-softmax loss with logQ correction, recency-aware attention pooling of behaviour
sequences, and the streaming item-frequency estimator the logQ correction reads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recis.features import SparseFeature

from .layers import masked_softmax


def in_batch_softmax_loss(
    u: torch.Tensor,
    v: torch.Tensor,
    temperature: float,
    log_q: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sampled softmax with the positive of row ``a`` in column ``a``.

    ``u [P, D]``, ``v [C, D]`` (``C >= P``, the first ``P`` columns are the positives),
    ``log_q [C]`` subtracted from every row's logits (logQ correction), ``mask [P, C]``
    True where a column must be ignored. Returns the mean cross-entropy.
    """
    logits = u @ v.T / temperature  # [P, C]
    if log_q is not None:
        logits = logits - log_q[None, :]
    if mask is not None:
        logits = logits.masked_fill(mask, float("-inf"))
    return F.cross_entropy(logits, torch.arange(u.shape[0], device=u.device))


class RecencyAttentionPool(nn.Module):
    """Attention pooling of a behaviour sequence, aware of how recent each item is.

    ``x_i = e_i + p_{r_i}`` with ``r_i`` the recency (0 = the latest item) and ``p`` a learned
    position table; weights ``a = softmax_i(w^T tanh(W x_i))`` over the valid positions;
    output ``sum_i a_i x_i``. Shapes: ``values [B, L, D]`` (ids oldest first, left-aligned),
    ``mask [B, L]`` -> ``[B, D]`` (zeros for an empty sequence).
    """

    def __init__(self, dim: int, max_len: int, device: torch.device | None = None) -> None:
        super().__init__()
        self.position = nn.Embedding(max_len, dim, device=device)
        nn.init.normal_(self.position.weight, std=0.02)
        self.score = nn.Sequential(
            nn.Linear(dim, dim, device=device), nn.Tanh(), nn.Linear(dim, 1, device=device)
        )

    def forward(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        length = mask.sum(1, keepdim=True)  # [B, 1]
        steps = torch.arange(values.shape[1], device=values.device)[None, :]
        recency = (length - 1 - steps).clamp(0, self.position.num_embeddings - 1)  # [B, L]
        x = values + self.position(recency) * mask[..., None]
        weights = masked_softmax(self.score(x).squeeze(-1), mask)  # [B, L]
        return (weights[..., None] * x).sum(1)


class FrequencyEstimator(nn.Module):
    """Streaming item probability (Yi et al. 2019): hashed last-seen step and mean gap.

    On sighting id ``x`` at step ``t``: ``B[h] <- (1 - a) B[h] + a (t - A[h])``, ``A[h] <- t``;
    the estimate is ``p = 1 / B[h]`` (clamped to ``(0, 1]``).
    """

    # buffers (register_buffer): ``[buckets]`` last-seen step and mean gap, ``[]`` step
    last: torch.Tensor
    gap: torch.Tensor
    step: torch.Tensor

    def __init__(self, buckets: int, alpha: float) -> None:
        super().__init__()
        self.buckets, self.alpha = buckets, alpha
        self.register_buffer("last", torch.zeros(buckets, dtype=torch.float64))
        self.register_buffer("gap", torch.ones(buckets, dtype=torch.float64))
        self.register_buffer("step", torch.zeros((), dtype=torch.float64))

    def _bucket(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.remainder(ids, self.buckets)

    def update(self, ids: torch.Tensor) -> None:
        self.step += 1
        h = torch.unique(self._bucket(ids))
        self.gap[h] = (1 - self.alpha) * self.gap[h] + self.alpha * (self.step - self.last[h])
        self.last[h] = self.step

    def log_prob(self, ids: torch.Tensor) -> torch.Tensor:
        return -torch.log(self.gap[self._bucket(ids)].clamp_min(1.0)).float()


def recency_pools(
    feats: list[SparseFeature], dims: dict[str, int], device: torch.device
) -> dict[str, RecencyAttentionPool]:
    """One :class:`RecencyAttentionPool` per sequence feature, sized by its table and
    ``max_len`` (checked by :func:`recis.models.two_tower.check_towers`)."""
    pools = {}
    for f in feats:
        assert f.max_len is not None  # check_towers refuses a sequence without max_len
        pools[f.name] = RecencyAttentionPool(dims[f.table_name], f.max_len, device)
    return pools
