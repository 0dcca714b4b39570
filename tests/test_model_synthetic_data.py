"""The retrieval and relevance generators: deterministic by seed, consistent ground truth."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from recis.io.tokenizers import hashed_ngrams, ngrams
from recis.synthetic import generate_relevance, generate_retrieval


def test_relevance_generator_is_deterministic_and_consistent(tmp_path) -> None:
    a = generate_relevance(tmp_path / "a", 300, 100, files=1, seed=5)
    generate_relevance(tmp_path / "b", 300, 100, files=1, seed=5)
    ta = pq.read_table(tmp_path / "a" / "train")
    assert ta.equals(pq.read_table(tmp_path / "b" / "train"))
    grade, true = ta.column("grade").to_numpy(), ta.column("true_grade").to_numpy()
    cov = ta.column("coverage").to_numpy()
    assert np.array_equal(ta.column("label").to_numpy(), (grade >= 2).astype(np.float32))
    assert np.all(np.abs(grade - true) <= 1) and 0 < np.mean(grade != true) < 0.25
    assert np.array_equal(true == 3, cov >= 1) and np.array_equal(true == 0, cov == 0)
    assert len(set(true.tolist())) == 4  # every grade occurs
    # token columns are the hashed n-grams of the text columns
    text = ta.column("query_text").to_pylist()[:5]
    tokens = ta.column("query_tokens").to_pylist()[:5]
    for t, ids in zip(text, tokens):
        assert ids == hashed_ngrams([t])[0].tolist() and len(ids) == len(ngrams(t))
    assert 0.8 < a.oracle_auc <= 1.0


def test_retrieval_generator_writes_corpus_and_relevant_items(tmp_path) -> None:
    info = generate_retrieval(tmp_path, 500, 100, files=1, seed=2, num_items=300, num_queries=50)
    items = pq.read_table(tmp_path / "items.parquet")
    queries = pq.read_table(tmp_path / "queries.parquet")
    assert items.column("item_id").to_pylist() == list(range(300))
    relevant = queries.column("relevant").to_pylist()
    assert len(relevant) == 50 and all(len(set(r)) == 20 for r in relevant)
    train = pq.read_table(tmp_path / "train")
    clicked = train.filter(train.column("label").to_numpy() > 0.5)
    # clicks follow the true affinity: most clicked items are among the query's relevant ones
    hit = [
        i in relevant[q]
        for q, i in zip(clicked["query_id"].to_pylist(), clicked["item_id"].to_pylist())
    ]
    assert np.mean(hit) > 0.4
    assert 0.5 < info.oracle_auc <= 1.0
    again = generate_retrieval(tmp_path / "again", 500, 100, 1, 2, num_items=300, num_queries=50)
    assert again.oracle_auc == info.oracle_auc
    assert pq.read_table(tmp_path / "again" / "train").equals(train)
