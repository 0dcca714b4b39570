"""BM25 over a text corpus: the one chunk DyKnow-RAG shows the model.

Terms are the character 1- and 2-grams of the NFKC-normalised, lower-cased text, so Chinese
needs no segmentation; the index and scoring are :class:`recis.io.lexical.BM25Index`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from recis.io.lexical import BM25Index
from recis.llm.config import RetrieverConfig
from recis.llm.example import Example
from recis.llm.task import read_table


class BM25Retriever:
    """Top-k chunks of ``corpus`` for each query by BM25 (``k1``, ``b``).

    Example::

        r = BM25Retriever(["red shoes", "blue phone case"])
        r.search(["phone"], k=1)  # [[1]]
    """

    def __init__(self, corpus: Sequence[str], k1: float = 1.2, b: float = 0.75) -> None:
        self.corpus = list(corpus)
        self.index = BM25Index(self.corpus, k1, b)

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
        return self.index.scores(queries)

    def search(self, queries: Sequence[str], k: int = 1, batch_size: int = 256) -> list[list[int]]:
        """Indices of the ``k`` best chunks per query (best first)."""
        rows: list[list[int]] = self.index.topk(queries, k, batch_size)[1].tolist()
        return rows

    def with_context(self, examples: Sequence[Example]) -> list[Example]:
        """Each example with the best chunk for its query (a chunk equal to the item's title
        is passed over: it would restate the item, not add knowledge)."""
        hits = self.search([e.query for e in examples], k=2)
        out = []
        for e, idx in zip(examples, hits):
            chunks = [self.corpus[i] for i in idx if self.corpus[i] != e.title]
            out.append(replace(e, context=chunks[0] if chunks else ""))
        return out
