"""Full-corpus evaluation: Recall/HR/NDCG@K with seen-item exclusion, head vs long-tail
queries, and the reward model's mean relevance of the top-K (relevance@K).

Every pool item is scored for every eval query (exact, no index); the query's training
positives are excluded from its candidates (:func:`recis.metrics.ranking_metrics`, ties as
exact expectations). A query is long-tail when it occurs at most ``tail_max_count`` times in
the training pairs.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from recis.metrics import ranking_metrics
from recis.retrieval_rl.config import EvalConfig
from recis.retrieval_rl.data import RetrievalData
from recis.retrieval_rl.rewards import RelevanceScorer


class PoolEncoder(Protocol):
    """What evaluation needs of a model: query rows to vectors ``[B, D]``, the pool ``[N, D]``
    (``TextDualEncoder``, ``recis.retrieval_rl.lrem.LREMEncoder``)."""

    def eval(self) -> Any: ...

    def encode_queries(self, rows: torch.Tensor) -> torch.Tensor: ...

    def encode_pool(self) -> torch.Tensor: ...


@torch.no_grad()
def evaluate(
    model: PoolEncoder,
    data: RetrievalData,
    cfg: EvalConfig,
    scorer: RelevanceScorer | None = None,
    chunk: int = 512,
) -> dict[str, float]:
    """``{"recall@K", "hr@K", "ndcg@K", "tail_recall@K", "head_recall@K", "relevance@k",
    "queries", "tail_queries"}`` means over the eval queries (``tail_`` / ``head_`` only when
    that part has queries)."""
    model.eval()
    queries, relevant = data.eval_queries, data.eval_relevant
    if cfg.max_queries and len(queries) > cfg.max_queries:
        keep = np.random.default_rng(0).choice(len(queries), cfg.max_queries, replace=False)
        keep.sort()
        queries, relevant = queries[keep], [relevant[i] for i in keep]
    pool = model.encode_pool()
    ks = tuple(cfg.ks)
    per: dict[str, list[np.ndarray]] = {}
    rel_scores: list[float] = []
    for s in range(0, len(queries), chunk):
        rows = torch.from_numpy(queries[s : s + chunk])
        scores = model.encode_queries(rows) @ pool.T  # [c, N]
        seen = [data.positives[q] for q in rows.tolist()]
        got = ranking_metrics(scores.double().numpy(), relevant[s : s + chunk], seen, ks)
        for name, vals in got.items():
            per.setdefault(name, []).append(vals)
        if scorer is not None:
            for i in range(len(rows)):
                scores[i, torch.from_numpy(seen[i])] = float("-inf")
            top = scores.topk(cfg.relevance_k, dim=1).indices
            qs = [data.queries[q] for q in rows.tolist() for _ in range(cfg.relevance_k)]
            its = [data.items[i] for i in top.reshape(-1).tolist()]
            rel_scores.extend(scorer.score(qs, its).tolist())
    tail = data.query_count[queries] <= cfg.tail_max_count
    out: dict[str, float] = {"queries": float(len(queries)), "tail_queries": float(tail.sum())}
    for name, parts in per.items():
        vals = np.concatenate(parts)
        out[name] = float(vals.mean())
        if name.startswith("recall@"):
            # a part with no query has no recall (left out, never printed as nan)
            if tail.any():
                out[f"tail_{name}"] = float(vals[tail].mean())
            if (~tail).any():
                out[f"head_{name}"] = float(vals[~tail].mean())
    if scorer is not None:
        out[f"relevance@{cfg.relevance_k}"] = float(np.mean(rel_scores))
    return out
