"""BM25 chunks for DyKnow-RAG."""

from __future__ import annotations

import math

import torch

from recis.llm.example import Example
from recis.llm.retrieval import BM25Retriever


def test_bm25_ranks_the_chunk_sharing_the_query_terms_first():
    corpus = ["red shoes", "blue phone case", "小孩感冒过后久咳嗽", "昆明公积金"]
    r = BM25Retriever(corpus)
    assert [h[0] for h in r.search(["phone", "咳嗽怎么办", "昆明 公积金"], k=2)] == [1, 2, 3]
    s = r.scores(["zzz"])  # no known term: every chunk scores 0
    assert torch.equal(s, torch.zeros(1, 4))


def test_bm25_score_equals_a_hand_computation():
    # terms are character 1-2-grams; query "a": one term, in chunk 0 once, in 1 of 2 chunks
    r = BM25Retriever(["ab", "cc"], k1=1.2, b=0.75)
    idf = math.log(1 + (2 - 1 + 0.5) / (1 + 0.5))
    # chunk 0 has 3 terms (a, b, ab); average length 3 -> norm = k1
    want = idf * 1 * 2.2 / (1 + 1.2)
    assert torch.allclose(r.scores(["a"]), torch.tensor([[want, 0.0]]))


def test_a_chunk_equal_to_the_title_is_passed_over():
    r = BM25Retriever(["red shoe", "red shoe sale"])
    ex = Example("red shoe", "red shoe", 1)
    assert r.with_context([ex])[0].context == "red shoe sale"


def _encoder(queries: list[str], corpus: list[str]):  # noqa: ANN202
    from recis.retrieval_rl.encoder import TextDualEncoder, TokenizedTexts

    torch.manual_seed(0)
    return TextDualEncoder(
        TokenizedTexts.build(queries, 256), TokenizedTexts.build(corpus, 256), 256, 8, 8
    )


def test_dense_chunks_are_the_encoders_top_inner_products() -> None:
    import numpy as np

    from recis.llm.retrieval import attach_context
    from recis.retrieval_rl.chunks import DenseChunkRetriever
    from recis.retrieval_rl.encoder import TokenizedTexts
    from recis.retrieval_rl.synth_dense import DenseRetriever

    queries = ["red shoe", "blue lamp", "green desk sofa"]
    corpus = [f"{w} chunk {i}" for i, w in enumerate(["red", "blue", "green", "desk", "lamp"])]
    model = _encoder(["unrelated query"], ["an item the run had"])  # its own pool is not used
    r = DenseChunkRetriever(DenseRetriever(model, 256, chunk=2, pool=corpus), corpus)
    with torch.no_grad():  # by hand: query tower on the queries, item tower on the corpus
        u = model.query_tower(*TokenizedTexts.build(queries, 256).take(np.arange(3)))
        v = model.item_tower(*TokenizedTexts.build(corpus, 256).take(np.arange(5)))
    want = (u @ v.T).topk(3, dim=1).indices.tolist()
    assert r.search(queries, 3) == want
    assert r.search([], 2) == []
    # the best chunk is attached unless it restates the title; then the second best
    best, second = want[0][0], want[0][1]
    got = attach_context(r, [Example("red shoe", "t", 1), Example("red shoe", corpus[best], 1)])
    assert [e.context for e in got] == [corpus[best], corpus[second]]


def test_dense_retriever_kind_is_checked_and_needs_a_loader(tmp_path) -> None:  # noqa: ANN001
    import pytest

    from recis.config import validate
    from recis.errors import ConfigError
    from recis.llm.config import RetrieverConfig
    from recis.llm.retrieval import build_retriever
    from recis.retrieval_rl.chunks import DenseChunkRetriever

    with pytest.raises(ValueError, match="run_config: kind dense needs"):
        RetrieverConfig(corpus="c.parquet", kind="dense")
    with pytest.raises(ConfigError) as err:  # as a config file gives it: the field and why
        validate(RetrieverConfig, {"corpus": "c.parquet", "kind": "dense"})
    assert str(err.value) == "<root>: run_config: kind dense needs a retrieval_grpo config file"
    cfg = RetrieverConfig(corpus="c.parquet", kind="dense", run_config=str(tmp_path / "x.yaml"))
    with pytest.raises(ConfigError, match=r"retriever\.kind: dense is loaded by `recis train`"):
        build_retriever(cfg)
    with pytest.raises(ConfigError, match="x.yaml"):  # the loader names the missing file
        build_retriever(cfg, {"dense": DenseChunkRetriever.from_config})
