"""DyKnow-RAG's context chunks by recis' own dense retriever (``retriever.kind: dense`` of a
relevance-LLM config): the dual encoder of a trained ``retrieval_grpo`` run encodes the
chunk corpus once with its item tower and each query with its query tower; a query's chunks
are the exact top-k of the inner product (:class:`~recis.retrieval_rl.synth_dense.DenseRetriever`).
The relevance-LLM layer (:mod:`recis.llm.retrieval`) sits below this one: ``recis train`` and
``recis eval`` hand it :meth:`DenseChunkRetriever.from_config` as the loader of that kind.

Example::

    cfg = RetrieverConfig(corpus="chunks.parquet", kind="dense", run_config="dual.yaml")
    Pipeline(llm_cfg, retriever=DenseChunkRetriever.from_config(cfg)).run()
"""

from __future__ import annotations

from collections.abc import Sequence

from recis.llm.config import RetrieverConfig
from recis.llm.retrieval import read_corpus
from recis.retrieval_rl.synth_dense import DenseRetriever, load_encoder


class DenseChunkRetriever:
    """A :class:`recis.llm.retrieval.ChunkRetriever` over ``corpus`` by a dual encoder."""

    def __init__(self, dense: DenseRetriever, corpus: Sequence[str]) -> None:
        self.dense, self.corpus = dense, list(corpus)

    @classmethod
    def from_config(cls, cfg: RetrieverConfig) -> DenseChunkRetriever:
        """The encoder of ``cfg.run_config`` (model ``cfg.stage``) over ``cfg.corpus``."""
        assert cfg.run_config is not None  # checked by RetrieverConfig
        model, buckets, name, _ = load_encoder(cfg.run_config, cfg.stage)
        corpus = read_corpus(cfg)
        return cls(DenseRetriever(model, buckets, name, pool=corpus), corpus)

    def search(self, queries: Sequence[str], k: int = 1) -> list[list[int]]:
        """Indices of the ``k`` best chunks per query (best first)."""
        return [row.tolist() for row in self.dense.search(queries, k)]
