"""The one chunk of a text corpus that DyKnow-RAG shows the model.

Any :class:`ChunkRetriever` (a corpus and a top-k search) attaches chunks through
:func:`attach_context`. Built in: :class:`BM25Retriever`, whose terms are the character 1- and
2-grams of the NFKC-normalised, lower-cased text, so Chinese needs no segmentation (index and
scoring: :class:`recis.io.lexical.BM25Index`). ``kind: dense`` (a trained dual encoder) lives
with the encoder in :mod:`recis.retrieval_rl.chunks`, a layer above this one: ``recis
train`` / ``recis eval`` pass it in as a loader, Python callers pass the retriever itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import torch

from recis.errors import ConfigError
from recis.io.lexical import BM25Index
from recis.llm.config import RelevanceLLMConfig, RetrieverConfig
from recis.llm.example import Example
from recis.llm.task import read_table


class ChunkRetriever(Protocol):
    """A text corpus and the indices of its ``k`` best chunks per query (best first)."""

    corpus: list[str]

    def search(self, queries: Sequence[str], k: int = 1) -> list[list[int]]: ...


RetrieverLoader = Callable[[RetrieverConfig], ChunkRetriever]


def attach_context(retriever: ChunkRetriever, examples: Sequence[Example]) -> list[Example]:
    """Each example with the best chunk for its query (a chunk equal to the item's title is
    passed over: it would restate the item, not add knowledge)."""
    hits = retriever.search([e.query for e in examples], 2)
    out = []
    for e, idx in zip(examples, hits):
        chunks = [retriever.corpus[i] for i in idx if retriever.corpus[i] != e.title]
        out.append(replace(e, context=chunks[0] if chunks else ""))
    return out


def read_corpus(cfg: RetrieverConfig) -> list[str]:
    """The chunks of ``cfg.corpus`` (column ``cfg.text``; a null row is an empty chunk)."""
    table = read_table(cfg.corpus, [cfg.text])
    return ["" if t is None else str(t) for t in table.column(cfg.text).to_pylist()]


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
        return cls(read_corpus(cfg), cfg.k1, cfg.b)

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
        """:func:`attach_context` with this retriever."""
        return attach_context(self, examples)


def build_retriever(
    cfg: RetrieverConfig, loaders: Mapping[str, RetrieverLoader] | None = None
) -> ChunkRetriever:
    """The retriever ``cfg`` names: BM25 here, another kind from ``loaders`` (``recis train``
    passes ``{"dense": ...}``); a kind nobody loads is a ConfigError naming the field."""
    if cfg.kind == "bm25":
        return BM25Retriever.from_config(cfg)
    loader = (loaders or {}).get(cfg.kind)
    if loader is None:
        raise ConfigError(
            f"retriever.kind: {cfg.kind} is loaded by `recis train` / `recis eval`; from Python "
            "pass the retriever (e.g. recis.retrieval_rl.chunks.DenseChunkRetriever.from_config)"
        )
    return loader(cfg)


def context_retriever(
    cfg: RelevanceLLMConfig,
    given: ChunkRetriever | None = None,
    loaders: Mapping[str, RetrieverLoader] | None = None,
) -> ChunkRetriever | None:
    """Where the pairs' chunks come from: None when ``cfg`` has no retriever or reads them from
    a context column; else ``given``, or the one ``cfg.retriever`` names (:func:`build_retriever`)."""
    if cfg.retriever is None or cfg.data.context is not None:
        return None
    return given or build_retriever(cfg.retriever, loaders)
