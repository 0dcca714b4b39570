"""A trained dual encoder as a retriever: the synthesis' offline retriever (``retriever.kind:
dense``) and, over any text corpus, DyKnow-RAG's chunk source (:mod:`recis.retrieval_rl.chunks`).

The encoder is a ``retrieval_grpo`` run's (:mod:`recis.retrieval_rl.pipeline`): any text is
encoded by its query tower (hashed char 1-2 grams, as the run tokenized its own queries), the
pool (the run's item pool, or the texts given) is encoded once by its item tower, and search
is exact (a matrix product + top-m).

Shapes: ``T`` texts, ``N`` pool items, ``D`` dim.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from recis.errors import CheckpointError
from recis.retrieval_rl.encoder import GramTower, TextDualEncoder, TokenizedTexts


class DenseRetriever:
    """Exact top-``m`` of ``<u(text), v(item)>`` over the encoder's pool.

    Args:
        model: the trained dual encoder (its ``item_tower`` encodes the pool once).
        buckets: the hash buckets the encoder was built with.
        name: provenance (e.g. ``dense:RUN_DIR/grpo``).
        chunk: texts per matrix product (memory ``chunk x N``).
        pool: texts to search instead of the encoder's own item pool.
    """

    def __init__(
        self,
        model: TextDualEncoder,
        buckets: int,
        name: str = "dense",
        chunk: int = 256,
        pool: Sequence[str] | None = None,
    ) -> None:
        self.model, self.buckets, self.name, self.chunk = model, buckets, name, chunk
        model.eval()
        with torch.no_grad():
            if pool is None:
                self.pool = model.encode_pool()
            else:
                self.pool = self.encode(model.item_tower, pool)

    def encode(self, tower: GramTower, texts: Sequence[str]) -> torch.Tensor:
        """``texts`` through ``tower``, ``chunk`` at a time, ``[T, D]``."""
        tok = TokenizedTexts.build(texts, self.buckets)
        out = []
        for s in range(0, len(texts), self.chunk):
            ids, offsets = tok.take(np.arange(s, min(s + self.chunk, len(texts))))
            out.append(tower(ids.to(self.model.device), offsets.to(self.model.device)))
        return torch.cat(out) if out else torch.zeros(0, tower.dim, device=self.model.device)

    @torch.no_grad()
    def search(self, texts: Sequence[str], depth: int) -> list[np.ndarray]:
        if not texts:
            return []
        k = min(depth, len(self.pool))
        out: list[np.ndarray] = []
        for s in range(0, len(texts), self.chunk):
            u = self.encode(self.model.query_tower, texts[s : s + self.chunk])
            top = (u @ self.pool.T).topk(k, dim=1).indices  # [c, k]
            out.extend(top.cpu().numpy().astype(np.int64))
        return out


def load_encoder(config: str, stage: str) -> tuple[TextDualEncoder, int, str, list[str]]:
    """The trained dual encoder of a ``retrieval_grpo`` run (its config file; ``stage``:
    ``infonce`` or ``grpo``), its hash buckets, its provenance name and its pool's texts."""
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
    return model, cfg.encoder.buckets, f"dense:{cfg.run_dir}/{stage}", data.items


def load_dense(config: str, stage: str) -> tuple[DenseRetriever, list[str]]:
    """The retriever of a ``retrieval_grpo`` run over its own pool, and the pool's texts (the
    synthesis' pool)."""
    model, buckets, name, items = load_encoder(config, stage)
    return DenseRetriever(model, buckets, name), items
