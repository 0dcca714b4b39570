"""Rewards of retrieved items, as components combined with configurable weights.

Retrieval-GRPO (arXiv 2511.13885; our reading): each query's K retrieved items are scored by
a relevance model, an item quality score and an exclusivity score (items other retrieval
channels already return earn less), and the weighted sum is the GRPO reward. We add the
ground-truth click (the logged positive) as a component, so the reward can keep the
behavioural signal InfoNCE trained on.

Every reward maps (query rows ``[Q]``, retrieved pool rows ``[Q, K]``) to ``[Q, K]`` floats.
Query rows index the query table the reward was built with; pool rows the item pool.

Relevance models plug in through :class:`RelevanceScorer` (``score(queries, titles) -> [n]``
in ``[0, 1]``): :class:`LexicalRelevanceScorer` (a logistic model on the nine lexical
features of :mod:`recis.io.lexical`, fitted on labelled pairs) is built in. The relevance
LLM of ``recis.llm`` (issue 18) is a peer application package, so it is not imported here:
wrap its scoring (``recis.llm.scoring.level_probs`` + ``cumulative_score`` over a saved
stage) in an object with this ``score`` method and pass it to :class:`RelevanceReward`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from recis.errors import ConfigError
from recis.io.lexical import BM25Index, LexicalMatcher


class Reward(ABC):
    """One reward component: ``(queries [Q], rows [Q, K]) -> [Q, K]``."""

    name: str = "reward"

    @abstractmethod
    def __call__(self, queries: torch.Tensor, rows: torch.Tensor) -> torch.Tensor: ...


def _membership(
    rows: torch.Tensor, sets: Sequence[np.ndarray], queries: torch.Tensor
) -> torch.Tensor:
    """``[Q, K]`` 1.0 where ``rows[q, k]`` is in ``sets[queries[q]]``."""
    out = torch.zeros(rows.shape, dtype=torch.float32)
    r = rows.cpu().numpy()
    for i, q in enumerate(queries.tolist()):
        out[i] = torch.from_numpy(np.isin(r[i], sets[q]).astype(np.float32))
    return out.to(rows.device)


class ClickReward(Reward):
    """1 for an item the query's log marks positive (``positives[q]``: pool rows), else 0."""

    name = "click"

    def __init__(self, positives: Sequence[np.ndarray]) -> None:
        self.positives = positives

    def __call__(self, queries: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return _membership(rows, self.positives, queries)


class QualityReward(Reward):
    """An item's quality score, a column of the pool (``quality [N]``)."""

    name = "quality"

    def __init__(self, quality: torch.Tensor) -> None:
        self.quality = quality.float()

    def __call__(self, queries: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return self.quality.to(rows.device)[rows]


class ExclusivityReward(Reward):
    """``1 - c / C``: ``c`` of the ``C`` other channels already return the item for the query.

    ``channels[c][q]``: the pool rows channel ``c`` returns for query row ``q``.
    """

    name = "exclusivity"

    def __init__(self, channels: Sequence[Sequence[np.ndarray]]) -> None:
        if not channels:
            raise ConfigError("rewards.exclusivity: needs at least one other channel")
        self.channels = channels

    def __call__(self, queries: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        hits = torch.stack([_membership(rows, ch, queries) for ch in self.channels]).sum(0)
        return 1.0 - hits / len(self.channels)


class BM25Channel:
    """A lexical retrieval channel: top-``m`` pool items per query by BM25 over char 1-2 grams.

    ``results(queries) -> list [Q] of pool-row arrays``; the pool is indexed once
    (:class:`recis.io.lexical.BM25Index`).
    """

    def __init__(self, items: Sequence[str], k1: float = 1.2, b: float = 0.75) -> None:
        self.index = BM25Index(items, k1, b)

    def results(self, queries: Sequence[str], m: int, batch: int = 512) -> list[np.ndarray]:
        """The ``m`` best pool rows per query (rows with a zero score are left out)."""
        top_s, top_r = self.index.topk(queries, m, batch)
        return [r[s > 0].numpy() for s, r in zip(top_s, top_r)]


class RelevanceScorer(Protocol):
    """A relevance model: ``score(queries, titles) -> [n]`` float tensor in ``[0, 1]``."""

    def score(self, queries: Sequence[str], titles: Sequence[str]) -> torch.Tensor: ...


class LexicalRelevanceScorer:
    """Logistic regression on the nine lexical features (:mod:`recis.io.lexical`).

    Fitted on labelled (query, title, label) pairs, ``label >= positive`` as relevant; the
    feature statistics come from the fitting pairs only.
    """

    def __init__(
        self,
        matcher: LexicalMatcher,
        weight: torch.Tensor,
        bias: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
    ) -> None:
        self.matcher, self.weight, self.bias, self.mean, self.std = matcher, weight, bias, mean, std

    @classmethod
    def fit(
        cls,
        queries: Sequence[str],
        titles: Sequence[str],
        labels: np.ndarray,
        positive: int = 1,
        steps: int = 200,
    ) -> LexicalRelevanceScorer:
        matcher = LexicalMatcher.fit(list(queries), list(titles))
        x = torch.from_numpy(matcher.features(list(queries), list(titles))).float()
        mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
        x = (x - mean) / std
        y = torch.from_numpy((np.asarray(labels) >= positive).astype(np.float32))
        w = torch.zeros(x.shape[1], requires_grad=True)
        b = torch.zeros((), requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=steps)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y)
            loss = loss + 1e-4 * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return cls(matcher, w.detach(), b.detach(), mean, std)

    def score(self, queries: Sequence[str], titles: Sequence[str]) -> torch.Tensor:
        x = torch.from_numpy(self.matcher.features(list(queries), list(titles))).float()
        return torch.sigmoid(((x - self.mean) / self.std) @ self.weight + self.bias)


class PublishedRelevanceScorer:
    """A relevance model as ``recis serve``'s ``/score`` scores it (its relevance output, in
    ``[0, 1]``): ``path`` is a relevance-LLM run directory (its last trained stage, loaded
    in memory), or a DeepBoW / relevance-LLM version published by ``recis export`` (the
    version folder, or an export folder whose ``latest`` READY version is taken)."""

    def __init__(self, path: str) -> None:
        from recis.export.loading import load_published
        from recis.export.model import PairScoring

        model = load_published(path)
        if not isinstance(model, PairScoring):
            raise ConfigError(
                f"grpo.rewards.relevance_model: {path} is not a relevance version "
                "(DeepBoW or a relevance LLM)"
            )
        self.model = model
        self.query, self.item, self.output = model.pair_columns()

    def score(self, queries: Sequence[str], titles: Sequence[str]) -> torch.Tensor:
        rows = [{self.query: q, self.item: t} for q, t in zip(queries, titles)]
        return torch.from_numpy(self.model.score_rows(rows)[self.output]).float()


class RelevanceReward(Reward):
    """The relevance model's score of (query text, item text); scores are cached per pair
    (the model is the costly part of the reward, and a query meets the same items often)."""

    name = "relevance"

    def __init__(
        self, scorer: RelevanceScorer, queries: Sequence[str], items: Sequence[str]
    ) -> None:
        self.scorer, self.queries, self.items = scorer, queries, items
        self.cache: dict[tuple[int, int], float] = {}

    def __call__(self, queries: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        q = queries[:, None].expand_as(rows).reshape(-1).tolist()
        r = rows.reshape(-1).tolist()
        todo = sorted({(a, b) for a, b in zip(q, r) if (a, b) not in self.cache})
        if todo:
            s = self.scorer.score(
                [self.queries[a] for a, _ in todo], [self.items[b] for _, b in todo]
            )
            self.cache.update(zip(todo, s.tolist()))
        vals = [self.cache[(a, b)] for a, b in zip(q, r)]
        return torch.tensor(vals, dtype=torch.float32, device=rows.device).reshape(rows.shape)


class WeightedReward:
    """``sum_c w_c r_c``; :meth:`__call__` also returns each component's mean (for the log)."""

    def __init__(self, components: Sequence[tuple[Reward, float]]) -> None:
        if not components:
            raise ConfigError("rewards: at least one reward component is needed")
        self.components = list(components)

    def __call__(
        self, queries: torch.Tensor, rows: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        total = torch.zeros(rows.shape, dtype=torch.float32, device=rows.device)
        means: dict[str, float] = {}
        for reward, weight in self.components:
            r = reward(queries, rows)
            means[f"reward_{reward.name}"] = float(r.mean())
            total = total + weight * r
        means["reward"] = float(total.mean())
        return total, means
