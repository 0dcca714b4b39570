"""Synthetic query-product relevance data where term overlap *and synonyms* drive the label.

A hidden vocabulary of ``concepts`` each has 1-3 surface words (synonyms). A product is
a set of 3-6 concepts (Zipf-frequent), written once as a title with one random synonym
per concept plus filler words. A query is 1-3 concepts, written with random synonyms,
so an exact word match happens only part of the time: a model must learn synonyms.
Queries are drawn near the product (each query concept is taken from the product with
probability 0.55) or at random. The **true grade** is the covered fraction ``c`` of
query concepts: ``3`` if ``c = 1``, ``2`` if ``c >= 0.5``, ``1`` if ``c > 0``, else ``0``;
the label ``grade`` flips by one step with probability 0.1 (annotator noise).

Columns: ``query_text``, ``product_text`` (strings), ``query_tokens``,
``product_tokens`` (list<int64> hashed unigrams and bigrams, one shared salt so equal
terms get equal ids, see :func:`recis.io.tokenizers.hashed_ngrams`), ``product_id``, ``grade`` (0..3),
``relevance`` (``grade / 3``), ``label`` (``grade >= 2``), ``true_grade``, ``coverage``.
The oracle AUC is the AUC of the noise-free coverage against ``label`` on eval.
Deterministic by seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from recis.io.tokenizers import hashed_ngrams

from .ctr import SyntheticInfo, write_parquet_parts

NUM_CONCEPTS = 400
NUM_FILLERS = 150
NUM_PRODUCTS = 6000


def random_words(rng: np.random.Generator, count: int) -> list[str]:
    """``count`` distinct made-up words of 4-7 letters."""
    letters = np.array(list("abcdefghijklmnoprstuvz"))
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < count:
        w = "".join(rng.choice(letters, size=int(rng.integers(4, 8))))
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


class _World:
    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng([seed, 0x5E])
        words = random_words(rng, NUM_CONCEPTS * 3 + NUM_FILLERS)
        nsyn = rng.integers(1, 4, size=NUM_CONCEPTS)
        self.synonyms = []
        pos = 0
        for k in nsyn:
            self.synonyms.append(words[pos : pos + k])
            pos += k
        self.fillers = words[pos : pos + NUM_FILLERS]
        w = 1.0 / np.arange(1, NUM_CONCEPTS + 1) ** 0.8
        self.concept_p = w / w.sum()
        self.products: list[np.ndarray] = []
        self.titles: list[str] = []
        for _ in range(NUM_PRODUCTS):
            k = int(rng.integers(3, 7))
            concepts = rng.choice(NUM_CONCEPTS, size=k, replace=False, p=self.concept_p)
            words_ = [self._say(c, rng) for c in concepts]
            words_ += list(rng.choice(self.fillers, size=int(rng.integers(1, 3))))
            rng.shuffle(words_)
            self.products.append(concepts)
            self.titles.append(" ".join(words_))

    def _say(self, concept: int, rng: np.random.Generator) -> str:
        syn = self.synonyms[concept]
        return syn[int(rng.integers(len(syn)))]

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, object]:
        pid = rng.integers(NUM_PRODUCTS, size=n)
        queries, coverage = [], np.empty(n)
        for r in range(n):
            concepts = self.products[pid[r]]
            k = int(rng.integers(1, 4))
            near = rng.random() < 0.6
            q = []
            for _ in range(k):
                if near and rng.random() < 0.55:
                    q.append(int(rng.choice(concepts)))
                else:
                    q.append(int(rng.choice(NUM_CONCEPTS, p=self.concept_p)))
            q = list(dict.fromkeys(q))
            coverage[r] = np.isin(q, concepts).mean()
            queries.append(" ".join(self._say(c, rng) for c in q))
        true = np.where(
            coverage >= 1, 3, np.where(coverage >= 0.5, 2, np.where(coverage > 0, 1, 0))
        )
        flip = rng.random(n) < 0.1
        step = np.where(rng.random(n) < 0.5, -1, 1)
        grade = np.clip(true + flip * step, 0, 3)
        titles = [self.titles[i] for i in pid]
        return {
            "query_text": queries,
            "product_text": titles,
            "query_tokens": hashed_ngrams(queries),
            "product_tokens": hashed_ngrams(titles),
            "product_id": pid.astype(np.int64),
            "grade": grade.astype(np.int64),
            "relevance": (grade / 3.0).astype(np.float32),
            "label": (grade >= 2).astype(np.float32),
            "true_grade": true.astype(np.int64),
            "coverage": coverage.astype(np.float32),
        }


def token_table(cols: dict[str, Any], lists: tuple[str, ...] = ()) -> pa.Table:
    """Columns as an Arrow table; ``*_tokens`` columns and ``lists`` become list<int64>."""
    arrays = {}
    for name, v in cols.items():
        if name.endswith("_tokens") or name in lists:
            arrays[name] = pa.array([list(x) for x in v], pa.list_(pa.int64()))
        else:
            arrays[name] = pa.array(v)
    return pa.table(arrays)


def generate_relevance(
    path: str | Path,
    num_train: int = 100_000,
    num_eval: int = 20_000,
    files: int = 2,
    seed: int = 0,
) -> SyntheticInfo:
    """Write ``path/{train,eval}/*.parquet`` and ``path/info.json``; returns the oracle AUC."""
    path = Path(path)
    world = _World(seed)
    train = world.sample(num_train, np.random.default_rng([seed, 1]))
    evals = world.sample(num_eval, np.random.default_rng([seed, 2]))
    write_parquet_parts(token_table(train), path / "train", files)
    write_parquet_parts(token_table(evals), path / "eval", max(1, files // 2))
    # the true grade, ties broken by the noise-free coverage
    truth = np.asarray(evals["true_grade"]) + 1e-3 * np.asarray(evals["coverage"])
    return SyntheticInfo.write(path, (num_train, num_eval, seed), truth, evals, train)
