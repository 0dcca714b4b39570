"""A text dual encoder over hashed character n-grams, with its query table and item pool.

``u(q) = normalize(MLP_q(mean_{g in grams(q)} E_q[h(g) mod V]))`` and likewise ``v(i)`` with
the item tower's own table; grams are the character 1- and 2-grams of the NFKC-normalised,
lower-cased text (:func:`recis.io.lexical.char_ngrams`: no word segmentation, so Chinese
works). Texts are tokenized once; a batch is a set of rows of the query table or the pool.

Shapes: ``B`` rows, ``D`` output dim, ``V`` hash buckets, ``N`` pool items.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recis.io.lexical import LexicalConfig, char_ngrams, normalize_texts


@dataclass
class TokenizedTexts:
    """``R`` texts as hashed gram ids: ``ids [M]`` and ``starts [R + 1]`` (text ``r`` holds
    ``ids[starts[r]:starts[r+1]]``); an empty text gets one id (bucket 0) so it embeds."""

    ids: np.ndarray
    starts: np.ndarray

    @classmethod
    def build(cls, texts: Sequence[str], buckets: int) -> TokenizedTexts:
        g = char_ngrams(normalize_texts(list(texts), LexicalConfig()), (1, 2))
        order = np.argsort(g.row, kind="stable")
        rows, ids = g.row[order], np.remainder(g.term[order], buckets)
        counts = np.bincount(rows, minlength=len(texts))
        empty = np.flatnonzero(counts == 0)
        if len(empty):  # one bucket-0 id for each empty text, kept in row order
            rows = np.concatenate([rows, empty])
            ids = np.concatenate([ids, np.zeros(len(empty), ids.dtype)])
            order = np.argsort(rows, kind="stable")
            rows, ids = rows[order], ids[order]
            counts = np.bincount(rows, minlength=len(texts))
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(ids.astype(np.int64), starts)

    def __len__(self) -> int:
        return len(self.starts) - 1

    def take(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids [M'], offsets [len(rows)])`` of the given rows, for ``nn.EmbeddingBag``."""
        lo, hi = self.starts[rows], self.starts[rows + 1]
        lengths = hi - lo
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        idx = np.repeat(lo - offsets, lengths) + np.arange(int(lengths.sum()))
        return torch.from_numpy(self.ids[idx]), torch.from_numpy(offsets)


class GramTower(nn.Module):
    """Mean of hashed gram embeddings then an MLP, unit-normalised output ``[B, D]``."""

    def __init__(self, buckets: int, width: int, dim: int, device: torch.device | str) -> None:
        super().__init__()
        self.dim = dim
        self.bag = nn.EmbeddingBag(buckets, width, mode="mean", device=device)
        nn.init.normal_(self.bag.weight, std=0.1)
        self.mlp = nn.Sequential(
            nn.Linear(width, width, device=device), nn.ReLU(), nn.Linear(width, dim, device=device)
        )

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(self.bag(ids, offsets)), dim=-1)


class TextDualEncoder(nn.Module):
    """Query and item :class:`GramTower` over a fixed query table and item pool.

    Args:
        queries, items: the tokenized query table and item pool (rows are what the trainer
            passes around).
        buckets, width, dim: hash buckets, embedding width, output dim.
        device: where parameters and outputs live.

    Example::

        enc = TextDualEncoder(TokenizedTexts.build(qs, 1 << 16), TokenizedTexts.build(ts, 1 << 16))
        u = enc.encode_queries(torch.tensor([0, 1]))  # [2, D]
    """

    def __init__(
        self,
        queries: TokenizedTexts,
        items: TokenizedTexts,
        buckets: int = 1 << 16,
        width: int = 64,
        dim: int = 64,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        self.queries, self.items, self.device = queries, items, torch.device(device)
        self.query_tower = GramTower(buckets, width, dim, self.device)
        self.item_tower = GramTower(buckets, width, dim, self.device)

    @property
    def num_items(self) -> int:
        return len(self.items)

    def _run(self, tower: GramTower, texts: TokenizedTexts, rows: torch.Tensor) -> torch.Tensor:
        ids, offsets = texts.take(rows.cpu().numpy())
        return tower(ids.to(self.device), offsets.to(self.device))

    def encode_queries(self, rows: torch.Tensor) -> torch.Tensor:
        """``rows [B]`` of the query table -> ``[B, D]``."""
        return self._run(self.query_tower, self.queries, rows)

    def encode_items(self, rows: torch.Tensor) -> torch.Tensor:
        """``rows [B]`` of the pool -> ``[B, D]``."""
        return self._run(self.item_tower, self.items, rows)

    @torch.no_grad()
    def encode_pool(self, chunk: int = 16384) -> torch.Tensor:
        """Every pool item, ``[N, D]`` (no gradient)."""
        out = [
            self.encode_items(torch.arange(s, min(s + chunk, self.num_items)))
            for s in range(0, self.num_items, chunk)
        ]
        return torch.cat(out)
