"""Synthetic query -> item retrieval data with known relevant items.

Items and queries live in ``CATEGORIES`` topical clusters with latent vectors
``z_i``, ``u_q`` (unit norm, ``LATENT`` dims). An item has a category, a brand,
a Zipf popularity and a title written from its category's words; a query has a
category and 1-3 words of it. The true affinity is
``s(q, i) = 5 <u_q, z_i> + 0.5 log pop_i``; a click row samples a query (Zipf) and
an item from ``softmax_i s(q, i)``. The **relevant items** of a query are its top
``RELEVANT`` items by ``s``. With probability ``neg_rate`` a row is instead a random
(uniform) item with ``label = 0``, so per-row AUC is meaningful too.

Writes ``train/``, ``eval/`` (rows: ``query_id, query_cat, query_tokens, item_id,
item_cat, item_brand, item_tokens, label``), ``items.parquet`` (the corpus: item
columns), ``queries.parquet`` (query columns + ``relevant`` list<int64>) and
``info.json``. Token columns are hashed word 1-2-grams (see
:func:`recis.io.tokenizers.hashed_ngrams`). Deterministic by seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recis.io.tokenizers import hashed_ngrams

from .ctr import SyntheticInfo, write_parquet_parts
from .relevance import random_words, token_table

NUM_ITEMS = 4000
NUM_QUERIES = 1500
CATEGORIES = 40
LATENT = 8
RELEVANT = 20
BRANDS = 300


class _Catalog:
    def __init__(self, seed: int, num_items: int, num_queries: int) -> None:
        NUM_ITEMS, NUM_QUERIES = num_items, num_queries  # noqa: N806 (sizes of this catalog)
        self.num_items = num_items
        rng = np.random.default_rng([seed, 0x7E])
        centers = rng.normal(size=(CATEGORIES, LATENT))
        self.words = [random_words(rng, 10) for _ in range(CATEGORIES)]
        self.item_cat = rng.integers(CATEGORIES, size=NUM_ITEMS)
        self.item_brand = rng.integers(BRANDS, size=NUM_ITEMS)
        z = centers[self.item_cat] + 0.6 * rng.normal(size=(NUM_ITEMS, LATENT))
        self.z = z / np.linalg.norm(z, axis=1, keepdims=True)
        rank = rng.permutation(NUM_ITEMS) + 1
        self.log_pop = -1.0 * np.log(rank)
        self.item_text = [
            " ".join(list(rng.choice(self.words[c], size=4, replace=False)) + [f"brand{b}"])
            for c, b in zip(self.item_cat, self.item_brand)
        ]
        self.query_cat = rng.integers(CATEGORIES, size=NUM_QUERIES)
        u = centers[self.query_cat] + 0.6 * rng.normal(size=(NUM_QUERIES, LATENT))
        self.u = u / np.linalg.norm(u, axis=1, keepdims=True)
        self.query_text = [
            " ".join(rng.choice(self.words[c], size=int(rng.integers(1, 4)), replace=False))
            for c in self.query_cat
        ]
        qw = 1.0 / np.arange(1, NUM_QUERIES + 1) ** 0.7
        self.query_p = qw[rng.permutation(NUM_QUERIES)]
        self.query_p /= self.query_p.sum()
        self.score = 5.0 * self.u @ self.z.T + 0.5 * self.log_pop[None, :]  # [Q, I]
        self.relevant = np.argsort(-self.score, axis=1)[:, :RELEVANT]
        self.item_tokens = hashed_ngrams(self.item_text)
        self.query_tokens = hashed_ngrams(self.query_text)

    def sample(self, n: int, rng: np.random.Generator, neg_rate: float) -> dict[str, object]:
        q = rng.choice(len(self.query_p), size=n, p=self.query_p)
        item = np.empty(n, dtype=np.int64)
        for qq in np.unique(q):
            rows = np.flatnonzero(q == qq)
            p = np.exp(self.score[qq] - self.score[qq].max())
            item[rows] = rng.choice(self.num_items, size=rows.size, p=p / p.sum())
        neg = rng.random(n) < neg_rate
        item[neg] = rng.integers(self.num_items, size=int(neg.sum()))
        return {
            **self.query_columns(q),
            **self.item_columns(item),
            "label": (~neg).astype(np.float32),
        }

    def query_columns(self, q: np.ndarray) -> dict[str, object]:
        return {
            "query_id": q.astype(np.int64),
            "query_cat": self.query_cat[q].astype(np.int64),
            "query_tokens": [self.query_tokens[i] for i in q],
        }

    def item_columns(self, item: np.ndarray) -> dict[str, object]:
        return {
            "item_id": item.astype(np.int64),
            "item_cat": self.item_cat[item].astype(np.int64),
            "item_brand": self.item_brand[item].astype(np.int64),
            "item_tokens": [self.item_tokens[i] for i in item],
        }


def _table(cols: dict[str, object]) -> pa.Table:
    return token_table(cols, lists=("relevant",))


def generate_retrieval(
    path: str | Path,
    num_train: int = 200_000,
    num_eval: int = 20_000,
    files: int = 2,
    seed: int = 0,
    neg_rate: float = 0.3,
    num_items: int = NUM_ITEMS,
    num_queries: int = NUM_QUERIES,
) -> SyntheticInfo:
    """Write the retrieval data set under ``path``.

    ``oracle_auc`` in the info is the per-row AUC of the true affinity on eval.
    """

    path = Path(path)
    cat = _Catalog(seed, num_items, num_queries)
    train = cat.sample(num_train, np.random.default_rng([seed, 1]), neg_rate)
    evals = cat.sample(num_eval, np.random.default_rng([seed, 2]), neg_rate)
    write_parquet_parts(_table(train), path / "train", files)
    write_parquet_parts(_table(evals), path / "eval", max(1, files // 2))
    items = np.arange(num_items)
    pq.write_table(
        _table(cat.item_columns(items)), path / "items.parquet", write_page_checksum=True
    )
    queries = np.arange(num_queries)
    qcols = {**cat.query_columns(queries), "relevant": list(cat.relevant)}
    pq.write_table(_table(qcols), path / "queries.parquet", write_page_checksum=True)
    truth = cat.score[np.asarray(evals["query_id"]), np.asarray(evals["item_id"])]
    return SyntheticInfo.write(path, (num_train, num_eval, seed), truth, evals, train)
