"""One-pass serving score: the level distribution from the next-token probabilities, and a
graded score from it by cumulative-probability partitioning (TaoSR1's serving, our reading).

For each pair the model reads :meth:`RelevanceTask.serving_prefix` once; the logits of its
last position, restricted to the ``L`` level tokens and renormalised, are the level
distribution ``p [B, L]``. The score partitions ``[0, 1]`` into ``L`` equal bands, one per
level (band ``k`` is ``[k/L, (k+1)/L)``), spreads each level's probability evenly over its
band, and returns the point where the probability above it falls to ``1 - quantile`` (the
median for ``quantile = 0.5``). The score orders pairs by their median level first and, inside
a band, by how much probability sits above it; a one-hot distribution at level ``k`` scores
the middle of band ``k``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from recis.errors import ConfigError
from recis.llm.task import Example, RelevanceTask
from recis.metrics import auc


def level_token_ids(tokenizer: Any, names: Sequence[str]) -> list[int]:
    """The token id of each level name; a name that is not exactly one token is a
    ConfigError naming ``levels.names``."""
    ids = []
    for name in names:
        toks = tokenizer.encode(name, add_special_tokens=False)
        if len(toks) != 1:
            raise ConfigError(
                f"levels.names: {name!r} is {len(toks)} tokens of this tokenizer, need exactly 1"
            )
        ids.append(toks[0])
    return ids


def cumulative_score(probs: torch.Tensor, quantile: float = 0.5) -> torch.Tensor:
    """Scores ``[B]`` in ``[0, 1]`` from level distributions ``probs [B, L]`` (rows sum to 1).

    With ``C_k = p_k + ... + p_{L-1}`` (probability at level ``k`` or above) and ``k`` the
    highest level with ``C_k >= 1 - quantile``, the score is
    ``(k + 1 - (1 - quantile - C_{k+1}) / p_k) / L``.
    """
    p = probs / probs.sum(dim=1, keepdim=True)
    L = p.shape[1]
    above = torch.flip(torch.cumsum(torch.flip(p, [1]), 1), [1])  # C_k  [B, L]
    above_next = torch.cat([above[:, 1:], torch.zeros_like(above[:, :1])], 1)  # C_{k+1}
    target = 1.0 - quantile
    reach = above >= target - 1e-12  # C_k >= target holds for a prefix of levels
    k = reach.long().sum(1) - 1  # [B] highest such level
    pk = p.gather(1, k[:, None])[:, 0].clamp_min(1e-12)
    ck1 = above_next.gather(1, k[:, None])[:, 0]
    return (k.to(p.dtype) + 1 - (target - ck1) / pk) / L


@torch.no_grad()
def prefix_level_probs(
    level_logits: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int,
    device: torch.device | str,
    num_levels: int,
) -> torch.Tensor:
    """The level distribution ``[N, L]`` after each of ``texts`` (serving prefixes): each batch
    is encoded with left padding, so the last position is every prefix's last token, and
    ``level_logits`` maps the encoded batch to the ``[B, L]`` level-token logits there."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out = []
    try:
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(
                list(texts[i : i + batch_size]),
                return_tensors="pt",
                padding=True,
                add_special_tokens=True,
            )
            enc = {k: v.to(device) for k, v in enc.items()}
            out.append(torch.softmax(level_logits(enc).float(), dim=1).cpu())
    finally:
        tokenizer.padding_side = side
    return torch.cat(out) if out else torch.zeros(0, num_levels)


@torch.no_grad()
def level_probs(
    model: Any,
    tokenizer: Any,
    task: RelevanceTask,
    examples: Sequence[Example],
    batch_size: int = 32,
    with_context: bool = True,
) -> torch.Tensor:
    """The level distribution ``[N, L]`` of each example, one forward pass per batch."""
    ids = torch.tensor(level_token_ids(tokenizer, task.levels.names))
    device = next(model.parameters()).device
    ids = ids.to(device)
    was_training = model.training
    model.eval()
    texts = [task.serving_prefix(e, with_context) for e in examples]
    try:
        return prefix_level_probs(
            lambda enc: model(**enc).logits[:, -1, :].float()[:, ids],
            tokenizer,
            texts,
            batch_size,
            device,
            len(ids),
        )
    finally:
        model.train(was_training)


def relevance_metrics(
    probs: torch.Tensor, examples: Sequence[Example], task: RelevanceTask
) -> dict[str, float | None]:
    """AUC of the serving score against ``label >= relevant_from``, accuracy of the argmax
    level overall and per level (``acc_level_k``; None where no example has level ``k``)."""
    labels = np.array([e.label for e in examples])
    score = cumulative_score(probs, task.prompt.quantile).numpy()
    pred = probs.argmax(1).numpy()
    out: dict[str, float | None] = {
        "auc": auc(score, (labels >= task.levels.relevant_from).astype(np.float64)),
        "accuracy": float((pred == labels).mean()) if len(labels) else None,
    }
    for k in range(task.num_levels):
        mask = labels == k
        out[f"acc_level_{k}"] = float((pred[mask] == k).mean()) if mask.any() else None
    return out
