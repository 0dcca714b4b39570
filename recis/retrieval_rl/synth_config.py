"""The config of a query-rewrite synthesis run (``kind: query_rewrite``), validated on load.

A run builds (or loads) a rewriter, trains it with SFT then GRPO (either stage skipped with
``max_steps: 0``), runs it over a query set, retrieves with the offline pipeline, curates and
writes query-item pairs to ``synth.out`` (parquet with provenance columns). ``recis synthesize
CONFIG`` runs it; ``recis synthesize --model DIR --queries FILE --items FILE --pairs FILE --out
FILE`` is the same run with both stages skipped. docs/models/retrieval_rl.md has an example.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic.dataclasses import dataclass

from recis.config import STRICT
from recis.errors import ConfigError
from recis.llm.config import ScratchModelConfig
from recis.retrieval_rl.config import build_run, load_run

KIND = "query_rewrite"


@dataclass(config=STRICT)
class LabelledPairs:
    """Labelled (query, item, label) rows: they fit the relevance model (the rewards' and the
    curation's judge) and, without ``sft.rewrite_pairs``, give the SFT targets (the training
    positives' item texts, *our reading* of "pairs from the data"). ``split``/``train``: only
    rows whose ``split`` column equals ``train`` are used (None: every row)."""

    path: str
    query: str = "query"
    item: str = "title"
    label: str = "label"
    positive: int = 1
    split: str | None = "split"
    train: str = "dev"


@dataclass(config=STRICT)
class QuerySet:
    """The queries to synthesize for. ``count``: a column with each query's frequency in the
    behaviour log (None: rows per query in this file); queries with frequency at most
    ``tail_max_count`` are kept (the long tail; -1: every query); ``max_queries`` caps them
    (0: all; the first ones in file order)."""

    path: str
    column: str = "query"
    count: str | None = None
    tail_max_count: int = Field(default=0, ge=-1)
    max_queries: int = Field(default=0, ge=0)


@dataclass(config=STRICT)
class ItemPool:
    """The offline retriever's pool: the distinct texts of one column (None: the pairs file's
    distinct items)."""

    path: str | None = None
    column: str = "title"


@dataclass(config=STRICT)
class RewriterModel:
    """``path``: a local HF causal-LM directory; None builds a scratch Llama and a BPE
    tokenizer trained on the training texts (tests, CPU experiments)."""

    path: str | None = None
    scratch: ScratchModelConfig = Field(default_factory=ScratchModelConfig)


@dataclass(config=STRICT)
class RewriterSFT:
    """SFT on (query -> rewrite). ``rewrite_pairs``: a parquet with ``query`` and ``rewrite``
    columns (None: derived from the labelled positives, item text cut to ``max_rewrite_chars``)."""

    max_steps: int = Field(default=200, ge=0)
    batch_size: int = Field(default=32, gt=0)
    learning_rate: float = Field(default=1e-3, gt=0)
    max_rewrite_chars: int = Field(default=24, gt=0)
    rewrite_pairs: str | None = None
    seed: int = 0


@dataclass(config=STRICT)
class RewardMix:
    """trl reward weights of the three components (:mod:`.synth_rewards`)."""

    gain: float = 1.0
    relevance: float = 1.0
    diversity: float = 0.2


@dataclass(config=STRICT)
class RewriterGRPO:
    """trl GRPOTrainer on the rewards. ``queries``: training queries drawn for the RL pool."""

    max_steps: int = Field(default=20, ge=0)
    batch_size: int = Field(default=16, gt=0)
    learning_rate: float = Field(default=2e-4, gt=0)
    num_generations: int = Field(default=4, ge=2)
    max_completion_length: int = Field(default=16, gt=0)
    temperature: float = Field(default=1.0, gt=0)
    beta: float = Field(default=0.0, ge=0)
    queries: int = Field(default=512, gt=0)
    weights: RewardMix = Field(default_factory=RewardMix)
    seed: int = 0


@dataclass(config=STRICT)
class RetrieverConfig:
    """The offline retrieval pipeline and its depth ``m``: ``bm25`` over the pool, or
    ``dense``: the dual encoder of a trained ``retrieval_grpo`` run (``run_config``: its config
    file; ``stage``: which model), whose item pool then is the synthesis' pool."""

    kind: Literal["bm25", "dense"] = "bm25"
    depth: int = Field(default=20, gt=0)
    run_config: str | None = None
    stage: Literal["infonce", "grpo"] = "grpo"


@dataclass(config=STRICT)
class Curation:
    """``num_rewrites``: candidates ``M`` per query; a (query, item) pair is kept when the
    relevance model scores it at least ``min_relevance`` against the ORIGINAL query, it is not
    already a labelled positive, and it is among the query's ``max_pairs_per_query`` best;
    ``include_original``: also harvest the original query's own results (a control)."""

    out: str
    num_rewrites: int = Field(default=4, gt=0)
    max_new_tokens: int = Field(default=16, gt=0)
    temperature: float = Field(default=1.0, gt=0)
    min_relevance: float = Field(default=0.8, ge=0, le=1)
    max_pairs_per_query: int = Field(default=5, gt=0)
    include_original: bool = False
    use_rewrites: bool = True
    batch_size: int = Field(default=32, gt=0)
    seed: int = 0


@dataclass(config=STRICT)
class QueryRewriteConfig:
    kind: Literal["query_rewrite"]
    run_dir: str
    pairs: LabelledPairs
    queries: QuerySet
    synth: Curation
    items: ItemPool = Field(default_factory=ItemPool)
    model: RewriterModel = Field(default_factory=RewriterModel)
    sft: RewriterSFT = Field(default_factory=RewriterSFT)
    grpo: RewriterGRPO = Field(default_factory=RewriterGRPO)
    retriever: RetrieverConfig = Field(default_factory=RetrieverConfig)
    device: str = "cpu"


def build_config(raw: dict[str, Any]) -> QueryRewriteConfig:
    """Validate a plain mapping (ConfigError names the field)."""
    cfg = build_run(QueryRewriteConfig, raw)
    if cfg.retriever.kind == "dense" and cfg.retriever.run_config is None:
        raise ConfigError("retriever.run_config: kind dense needs a retrieval_grpo config file")
    if not cfg.synth.use_rewrites and not cfg.synth.include_original:
        raise ConfigError("synth.use_rewrites: false needs synth.include_original: true")
    return cfg


def load_synth_config(path: str | Path, overrides: list[str] | None = None) -> QueryRewriteConfig:
    """Load, override and validate a ``kind: query_rewrite`` config."""
    return load_run(path, overrides, KIND, build_config)
