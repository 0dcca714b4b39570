"""Fixtures of the relevance-LLM tests: a rule-decidable relevance set, a BPE tokenizer trained
on its text and a random 2-layer width-64 Llama, built once per session."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("trl")

from recis.llm.config import (  # noqa: E402
    LevelsConfig,
    PromptConfig,
    ScratchModelConfig,  # noqa: E402
)
from recis.llm.example import Example  # noqa: E402
from recis.llm.model import build_scratch  # noqa: E402
from recis.llm.task import RelevanceTask  # noqa: E402

WORDS = [
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
BRANDS = ["nike", "apple", "sony", "ikea"]


def make_examples(n: int, seed: int) -> list[Example]:
    """Label = how many of the query's 3 words the title holds (0..3): decidable by rule."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        q = rng.sample(WORDS, 3)
        k = rng.randrange(4)
        t = q[:k] + rng.sample([w for w in WORDS if w not in q], 4 - k)
        rng.shuffle(t)
        out.append(Example(" ".join(q), " ".join(t), k, {"brand": rng.choice(BRANDS)}))
    return out


def write_pairs(path: Path, examples: list[Example]) -> Path:
    rows = [
        {"query": e.query, "title": e.title, "brand": e.attributes["brand"], "label": e.label}
        for e in examples
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@dataclass
class Tiny:
    root: Path
    base: Path
    examples: list[Example]
    task: RelevanceTask  # level first, then the rule rationale
    bare: RelevanceTask  # level alone (short completions for the RL tests)
    train_file: Path
    eval_file: Path
    corpus_file: Path


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    root = tmp_path_factory.mktemp("llm")
    levels = LevelsConfig(names=["0", "1", "2", "3"], relevant_from=2)
    task = RelevanceTask(PromptConfig(), levels)
    bare = RelevanceTask(PromptConfig(rationale=False), levels)
    examples = make_examples(64, 0)
    texts = [task.prompt_text(e) + task.completion(e) for e in examples]
    texts += [task.prompt_text(e, False) + "\ncontext: " + w for e in examples[:4] for w in WORDS]
    base = build_scratch(ScratchModelConfig(vocab_size=300), texts, root / "base")
    corpus = [{"text": f"{w} is sold here"} for w in WORDS]
    pq.write_table(pa.Table.from_pylist(corpus), root / "corpus.parquet")
    return Tiny(
        root,
        base,
        examples,
        task,
        bare,
        write_pairs(root / "train.parquet", examples),
        write_pairs(root / "eval.parquet", make_examples(32, 1)),
        root / "corpus.parquet",
    )
