"""BM25 over a text corpus: the one chunk DyKnow-RAG shows the model.

Terms are the character 1- and 2-grams of the NFKC-normalised, lower-cased text (the pieces of
:mod:`recis.io.lexical`, so Chinese needs no segmentation). The corpus is indexed once as a
sparse ``[M, V]`` matrix of BM25 term weights; a batch of queries is a dense ``[V, B]``
indicator of their distinct terms, so scoring is one sparse-dense product ``[M, B]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from recis.io.lexical import LexicalConfig, char_ngrams, normalize_texts
from recis.llm.config import RetrieverConfig
from recis.llm.task import read_table

_SIZES = (1, 2)


class BM25Retriever:
    """Top-k chunks of ``corpus`` for each query by BM25 (``k1``, ``b``).

    Example::

        r = BM25Retriever(["red shoes", "blue phone case"])
        r.search(["phone"], k=1)  # [[1]]
    """

    def __init__(self, corpus: Sequence[str], k1: float = 1.2, b: float = 0.75) -> None:
        self.corpus = list(corpus)
        self._lex = LexicalConfig()
        g = char_ngrams(normalize_texts(self.corpus, self._lex), _SIZES)
        self.vocab, local = np.unique(g.term, return_inverse=True)
        m, v = len(self.corpus), len(self.vocab)
        keys, tf = np.unique(g.row * v + local, return_counts=True)
        rows, cols = keys // v, keys % v
        df = np.bincount(cols, minlength=v).astype(np.float64)
        idf = np.log(1.0 + (m - df + 0.5) / (df + 0.5))
        length = np.bincount(g.row, minlength=m).astype(np.float64)
        norm = k1 * (1 - b + b * length / max(length.mean(), 1e-9))
        w = idf[cols] * tf * (k1 + 1) / (tf + norm[rows])
        self._matrix = torch.sparse_coo_tensor(
            torch.from_numpy(np.stack([rows, cols])),
            torch.from_numpy(w).float(),
            (m, v),
            check_invariants=False,
        ).coalesce()

    @classmethod
    def from_config(cls, cfg: RetrieverConfig) -> BM25Retriever:
        """The corpus of ``cfg.corpus`` (column ``cfg.text``)."""
        table = read_table(cfg.corpus, [cfg.text])
        texts = ["" if t is None else str(t) for t in table.column(cfg.text).to_pylist()]
        return cls(texts, cfg.k1, cfg.b)

    @classmethod
    def from_config_path(cls, path: str | Path, text: str = "text") -> BM25Retriever:
        """The corpus of the file ``path`` (column ``text``), default BM25 parameters."""
        return cls.from_config(RetrieverConfig(corpus=str(path), text=text))

    def scores(self, queries: Sequence[str]) -> torch.Tensor:
        """BM25 of every chunk for every query, ``[B, M]``."""
        g = char_ngrams(normalize_texts(list(queries), self._lex), _SIZES)
        pos = np.searchsorted(self.vocab, g.term)
        pos = np.minimum(pos, len(self.vocab) - 1)
        hit = self.vocab[pos] == g.term if len(self.vocab) else np.zeros(len(pos), bool)
        ind = torch.zeros(len(self.vocab), len(queries))
        ind[torch.from_numpy(pos[hit]), torch.from_numpy(g.row[hit])] = 1.0
        return torch.sparse.mm(self._matrix, ind).T

    def search(self, queries: Sequence[str], k: int = 1, batch_size: int = 256) -> list[list[int]]:
        """Indices of the ``k`` best chunks per query (best first)."""
        out: list[list[int]] = []
        k = min(k, len(self.corpus))
        for i in range(0, len(queries), batch_size):
            s = self.scores(queries[i : i + batch_size])
            out.extend(s.topk(k, dim=1).indices.tolist())
        return out
