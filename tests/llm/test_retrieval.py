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
