"""The config of a Retrieval-GRPO run (``kind: retrieval_grpo``), validated on load.

A run trains an InfoNCE dual encoder (stage ``infonce``, skipped with ``init_from``: a run
directory whose ``infonce/model.pt`` is the starting model), then Retrieval-GRPO from it
(stage ``grpo``), and evaluates both. docs/models/retrieval_rl.md has a worked example.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from pydantic import Field
from pydantic.dataclasses import dataclass

from recis.config import STRICT, apply_overrides, load_yaml, validate
from recis.errors import ConfigError

KIND = "retrieval_grpo"


@dataclass(config=STRICT)
class ExtraPairsConfig:
    """Extra training positives in one parquet file, e.g. the pairs ``recis synthesize``
    writes: every row is a (query, item) positive of the training split (InfoNCE, and the
    GRPO stage's batches). They are not logged clicks (no click reward, no seen-item exclusion
    at eval) and do not count toward a query's frequency (head / tail). Items not in the pool
    join it."""

    path: str
    query: str = "query"
    item: str = "item"


@dataclass(config=STRICT)
class PairsConfig:
    """Labelled (query, item text) pairs in one parquet file.

    The pool is every distinct item text of the file. Rows with ``label >= positive`` are
    positives: those of the ``train`` split train InfoNCE (and the click reward), those of
    the ``eval`` split are each eval query's relevant items. ``split``: the column naming
    the split (None: every row is training data and ``eval_fraction`` of the queries, by a
    hash of the text, are held out).
    """

    path: str
    query: str = "query"
    item: str = "title"
    label: str = "label"
    positive: int = 1
    split: str | None = "split"
    train: str = "dev"
    eval: str = "test_public"
    eval_fraction: float = Field(default=0.2, gt=0, lt=1)
    quality: str | None = None  # a numeric item column: the quality reward (mean per item)
    extra_train: list[ExtraPairsConfig] = Field(default_factory=list)  # e.g. synthesized pairs


@dataclass(config=STRICT)
class EncoderConfig:
    buckets: int = Field(default=1 << 16, gt=0)
    width: int = Field(default=64, gt=0)
    dim: int = Field(default=64, gt=0)


@dataclass(config=STRICT)
class InfoNCEConfig:
    steps: int = Field(default=300, ge=0)
    batch_size: int = Field(default=256, gt=1)
    lr: float = Field(default=3e-3, gt=0)
    temperature: float = Field(default=0.05, gt=0)


@dataclass(config=STRICT)
class IndexConfig:
    """``kind``: exact (chunked matmul) or ivf (faiss); ``refresh_every``: steps between
    rebuilds of the index from the item tower (staleness, docs/models/retrieval_rl.md)."""

    kind: Literal["exact", "ivf"] = "exact"
    refresh_every: int = Field(default=10, gt=0)
    chunk: int = Field(default=65536, gt=0)
    nlist: int = Field(default=1024, gt=0)
    nprobe: int = Field(default=16, gt=0)
    threads: int = Field(default=1, gt=0)


@dataclass(config=STRICT)
class RewardWeights:
    """Weights of the reward components (0 leaves one out). ``bm25_depth``: how many items
    the built-in BM25 channel returns per query (the exclusivity reward's other channel).
    ``relevance_model``: a relevance-LLM run directory, or a relevance model published by
    ``recis export`` (a DeepBoW or relevance-LLM version folder, or its export folder), that
    scores the relevance reward and judges relevance@K; None: a logistic regression on
    lexical features fitted on the training labels."""

    relevance: float = 1.0
    click: float = 1.0
    quality: float = 0.0
    exclusivity: float = 0.0
    bm25_depth: int = Field(default=50, gt=0)
    relevance_model: str | None = None


@dataclass(config=STRICT)
class GRPOConfig:
    steps: int = Field(default=100, ge=0)
    batch_size: int = Field(default=128, gt=0)
    k: int = Field(default=32, gt=1)
    # a gentle stage from a trained InfoNCE model: on qbqtc lr 1e-3 / beta 0.04 lost 9% of
    # recall@50, lr 3e-4 / beta 0.1 kept it within 1% (docs/models/retrieval_rl.md)
    lr: float = Field(default=3e-4, gt=0)
    policy_temperature: float = Field(default=0.05, gt=0)
    clip: float = Field(default=0.2, gt=0)
    beta: float = Field(default=0.1, ge=0)
    infonce_weight: float = Field(default=1.0, ge=0)
    updates_per_batch: int = Field(default=1, gt=0)
    checkpoint_every: int = Field(default=50, gt=0)
    index: IndexConfig = Field(default_factory=IndexConfig)
    rewards: RewardWeights = Field(default_factory=RewardWeights)


@dataclass(config=STRICT)
class EvalConfig:
    """``ks``: cut-offs; ``tail_max_count``: a query seen at most this many times in the
    training pairs is long-tail; ``max_queries``: eval queries kept (0: all)."""

    ks: list[int] = Field(default_factory=lambda: [10, 50])
    relevance_k: int = Field(default=10, gt=0)
    tail_max_count: int = Field(default=0, ge=0)
    max_queries: int = Field(default=0, ge=0)


@dataclass(config=STRICT)
class RetrievalGRPORunConfig:
    kind: Literal["retrieval_grpo"]
    run_dir: str
    data: PairsConfig
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    infonce: InfoNCEConfig = Field(default_factory=InfoNCEConfig)
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    init_from: str | None = None
    seed: int = 0
    device: str = "cpu"


class _RunConfig(Protocol):
    device: str


RunConfig = TypeVar("RunConfig", bound=_RunConfig)


def raw_kind(raw: Any) -> Any:
    """The ``kind`` of a raw (YAML-loaded) config, None when it is not a mapping."""
    return raw.get("kind") if isinstance(raw, dict) else None


def build_run(cls: type[RunConfig], raw: dict[str, Any]) -> RunConfig:
    """Validate a plain mapping as ``cls`` (ConfigError names the field), device checked."""
    cfg = validate(cls, raw)
    from recis.config import check_device

    check_device(cfg.device)
    return cfg


def load_run(
    path: str | Path,
    overrides: list[str] | None,
    kind: str,
    build: Callable[[dict[str, Any]], RunConfig],
) -> RunConfig:
    """Load ``path``, apply ``--set`` overrides, refuse another ``kind``, then ``build(raw)``."""
    raw = apply_overrides(load_yaml(path), overrides or [])
    if raw_kind(raw) != kind:
        raise ConfigError(f"{path}: kind: expected {kind!r}, got {raw_kind(raw)!r}")
    return build(raw)


def is_retrieval_grpo(raw: Any) -> bool:
    """Whether a raw (YAML-loaded) config is a Retrieval-GRPO run (``kind: retrieval_grpo``)."""
    return raw_kind(raw) == KIND


def build_config(raw: dict[str, Any]) -> RetrievalGRPORunConfig:
    """Validate a plain mapping (ConfigError names the field)."""
    return build_run(RetrievalGRPORunConfig, raw)


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> RetrievalGRPORunConfig:
    """Load, override and validate a ``kind: retrieval_grpo`` config."""
    return load_run(path, overrides, KIND, build_config)
