"""Fixtures of the relevance-LLM tests: a rule-decidable relevance set, a BPE tokenizer trained
on its text and a random 2-layer width-64 Llama, built once per session."""

from __future__ import annotations

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


def make_examples(rows: list[dict]) -> list[Example]:
    """The root conftest's rule-decidable rows as examples."""
    return [Example(r["query"], r["title"], r["label"], {"brand": r["brand"]}) for r in rows]


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
def tiny(tmp_path_factory: pytest.TempPathFactory, rule_pairs, rule_words) -> Tiny:  # noqa: ANN001
    root = tmp_path_factory.mktemp("llm")
    levels = LevelsConfig(names=["0", "1", "2", "3"], relevant_from=2)
    task = RelevanceTask(PromptConfig(), levels)
    bare = RelevanceTask(PromptConfig(rationale=False), levels)
    examples = make_examples(rule_pairs(64, 0))
    texts = [task.prompt_text(e) + task.completion(e) for e in examples]
    texts += [
        task.prompt_text(e, False) + "\ncontext: " + w for e in examples[:4] for w in rule_words
    ]
    base = build_scratch(ScratchModelConfig(vocab_size=300), texts, root / "base")
    corpus = [{"text": f"{w} is sold here"} for w in rule_words]
    pq.write_table(pa.Table.from_pylist(corpus), root / "corpus.parquet")
    return Tiny(
        root,
        base,
        examples,
        task,
        bare,
        write_pairs(root / "train.parquet", examples),
        write_pairs(root / "eval.parquet", make_examples(rule_pairs(32, 1))),
        root / "corpus.parquet",
    )
