"""Shared fixtures: small synthetic datasets written as real parquet files."""

from __future__ import annotations

import os
import random

import pytest
import torch

# run configs name their model, resolved through the classes recis.models registers with
# recis.config on import (recis.config sits below the models); tests load configs directly
import recis.models  # noqa: F401

# deterministic, 2-core friendly
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def small_ctr(tmp_path_factory):
    """A small synthetic CTR dataset: (path, info)."""
    from recis.synthetic import generate_ctr

    path = tmp_path_factory.mktemp("ctr")
    info = generate_ctr(path, num_train=20_000, num_eval=5_000, files=3, seed=7)
    return path, info


RULE_WORDS = [
    "red",
    "blue",
    "green",
    "black",
    "white",
    "phone",
    "case",
    "shoe",
    "bag",
    "coat",
    "hat",
    "cup",
    "lamp",
    "desk",
    "sofa",
]
RULE_BRANDS = ["nike", "apple", "sony", "ikea"]


def _rule_pairs(n: int, seed: int) -> list[dict]:
    """(query, title, brand, label) rows whose label is how many of the query's 3 words the
    title holds (0..3): relevance decidable by rule."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        q = rng.sample(RULE_WORDS, 3)
        k = rng.randrange(4)
        t = q[:k] + rng.sample([w for w in RULE_WORDS if w not in q], 4 - k)
        rng.shuffle(t)
        brand = rng.choice(RULE_BRANDS)
        rows.append({"query": " ".join(q), "title": " ".join(t), "brand": brand, "label": k})
    return rows


@pytest.fixture(scope="session")
def rule_pairs():
    """``rule_pairs(n, seed)``: the rule-decidable relevance rows of :func:`_rule_pairs`."""
    return _rule_pairs


@pytest.fixture(scope="session")
def rule_words():
    """The vocabulary of :func:`_rule_pairs`."""
    return RULE_WORDS
