"""A trained dual encoder as the synthesis' offline retriever (``retriever.kind: dense``).

The encoder is a ``retrieval_grpo`` run's (:mod:`recis.retrieval_rl.pipeline`): any text is
encoded by its query tower (hashed char 1-2 grams, as the run tokenized its own queries), the
pool is the run's item pool encoded once, and search is exact (a matrix product + top-m).

Shapes: ``T`` texts, ``N`` pool items, ``D`` dim.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from recis.errors import CheckpointError
from recis.retrieval_rl.encoder import TextDualEncoder, TokenizedTexts


class DenseRetriever:
    """Exact top-``m`` of ``<u(text), v(item)>`` over the encoder's pool.

    Args:
        model: the trained dual encoder (its ``item_tower`` encodes the pool once).
        buckets: the hash buckets the encoder was built with.
        name: provenance (e.g. ``dense:RUN_DIR/grpo``).
        chunk: texts per matrix product (memory ``chunk x N``).
    """

    def __init__(
        self, model: TextDualEncoder, buckets: int, name: str = "dense", chunk: int = 256
    ) -> None:
        self.model, self.buckets, self.name, self.chunk = model, buckets, name, chunk
        model.eval()
        self.pool = model.encode_pool()  # [N, D]

    @torch.no_grad()
    def search(self, texts: Sequence[str], depth: int) -> list[np.ndarray]:
        if not texts:
            return []
        tok = TokenizedTexts.build(texts, self.buckets)
        k = min(depth, len(self.pool))
        out: list[np.ndarray] = []
        for s in range(0, len(texts), self.chunk):
            ids, offsets = tok.take(np.arange(s, min(s + self.chunk, len(texts))))
            u = self.model.query_tower(ids.to(self.model.device), offsets.to(self.model.device))
            top = (u @ self.pool.T).topk(k, dim=1).indices  # [c, k]
            out.extend(top.cpu().numpy().astype(np.int64))
        return out


def load_dense(config: str, stage: str) -> tuple[DenseRetriever, list[str]]:
    """The retriever of a ``retrieval_grpo`` run (its config file; ``stage``: ``infonce`` or
    ``grpo``) and its pool's texts (the synthesis' pool)."""
    from recis.retrieval_rl.config import load_run_config
    from recis.retrieval_rl.data import load_pairs
    from recis.retrieval_rl.pipeline import build_encoder
    from recis.retrieval_rl.trainer import load

    cfg = load_run_config(config)
    data = load_pairs(cfg.data)
    model = build_encoder(cfg, data)
    path = Path(cfg.run_dir) / stage / "model"
    if not path.exists():
        raise CheckpointError(f"retriever.run_config: {path} does not exist (train the run first)")
    load(path, model, None)
    return DenseRetriever(model, cfg.encoder.buckets, f"dense:{cfg.run_dir}/{stage}"), data.items
