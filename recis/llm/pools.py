"""Which examples an RL stage trains on, and in what order.

- GRPO / AGRL: the first ``pool`` examples (all when unset), shuffled by trl; with
  ``prefilter: N`` (GRPO) only those the start model's N samples get partly right (:func:`mixed`).
- DyKnow-RAG: prioritised by the start model's uncertainty (our reading of "RL pool
  prioritised by SFT uncertainty"): the entropy of its level distribution, highest first.
- TaoSR-SHE: diversified filtering against entropy collapse (our reading: at most
  ``max_per_title`` examples per item title, then levels interleaved round-robin so no level
  dominates), then an easy -> hard curriculum: ordered by the start model's probability of the
  right level, highest first, cut into ``curriculum_stages`` stages (trl keeps the order:
  shuffling is off for SHE).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

import torch

from recis.llm.task import Example, RelevanceTask


def first(examples: Sequence[Example], pool: int | None) -> list[Example]:
    return list(examples)[:pool] if pool else list(examples)


def by_uncertainty(
    examples: Sequence[Example], probs: torch.Tensor, pool: int | None
) -> list[Example]:
    """Highest level-distribution entropy first (``probs [N, L]``)."""
    ent = -(probs * probs.clamp_min(1e-12).log()).sum(1)
    order = torch.argsort(ent, descending=True, stable=True).tolist()
    return first([examples[i] for i in order], pool)


def diversified(examples: Sequence[Example], max_per_title: int, num_levels: int) -> list[int]:
    """Indices kept: at most ``max_per_title`` per title, levels interleaved round-robin."""
    seen: dict[str, int] = defaultdict(int)
    by_level: list[list[int]] = [[] for _ in range(num_levels)]
    for i, e in enumerate(examples):
        if seen[e.title] < max_per_title:
            seen[e.title] += 1
            by_level[e.label].append(i)
    out: list[int] = []
    for r in range(max((len(b) for b in by_level), default=0)):
        out.extend(b[r] for b in by_level if r < len(b))
    return out


def curriculum(
    examples: Sequence[Example], probs: torch.Tensor, stages: int, pool: int | None, seed: int = 0
) -> list[Example]:
    """Easy -> hard: by the probability of the right level (``probs [N, L]``), highest first,
    cut into ``stages`` equal parts that follow each other; each part is shuffled (seeded) so a
    batch mixes its examples."""
    labels = torch.tensor([e.label for e in examples])
    p_right = probs[torch.arange(len(examples)), labels]
    order = torch.argsort(p_right, descending=True, stable=True).tolist()
    chosen = first([examples[i] for i in order], pool)
    size = -(-len(chosen) // max(stages, 1))
    rng = random.Random(seed)
    out: list[Example] = []
    for s in range(0, len(chosen), size):
        part = chosen[s : s + size]
        rng.shuffle(part)
        out.extend(part)
    return out


def mixed(
    examples: Sequence[Example], samples: Sequence[Sequence[str]], task: RelevanceTask
) -> list[Example]:
    """TaoSR1's offline difficulty filter: the examples whose sampled completions
    (``samples[i]``, pass@N) are neither all right nor all wrong."""
    out = []
    for e, outs in zip(examples, samples):
        right = sum(task.parse_level(o) == e.label for o in outs)
        if 0 < right < len(outs):
            out.append(e)
    return out
