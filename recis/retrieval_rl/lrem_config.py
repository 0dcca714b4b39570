"""The config of an LREM run (``kind: lrem``, reason-then-embed), validated on load.

A run trains (or loads, ``init_from``) the InfoNCE dual encoder of :mod:`.config` (stage
``infonce``: its item tower encodes the pool, its query tower serves the easy queries), then
the LREM query tower in two stages, ``lrem_sft`` (SFT + InfoNCE on query-reasoning-item
triplets) and ``lrem_rl`` (GRPO over sampled reasonings, reward = retrieval of the target
item), and evaluates each. docs/models/retrieval_rl.md (LREM) has a worked example.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic.dataclasses import dataclass

from recis.config import STRICT
from recis.llm.config import ScratchModelConfig
from recis.retrieval_rl.config import (
    EncoderConfig,
    EvalConfig,
    IndexConfig,
    InfoNCEConfig,
    PairsConfig,
    build_run,
    load_run,
    raw_kind,
)

KIND = "lrem"


@dataclass(config=STRICT)
class LMConfig:
    """The query tower's causal LM.

    ``model_path``: a local HF directory (tokenizer + causal LM, e.g. a small Qwen or Llama);
    None builds ``scratch`` (a random Llama and a byte-level BPE tokenizer trained on the run's
    query and item texts; tests and CPU benchmarks). ``max_reasoning_tokens`` (N): the most
    tokens the LM writes before the embedding (0: the direct LM embedding, no reasoning - the
    papers' baseline); ``separator``: the text between the query and
    its reasoning.
    """

    model_path: str | None = None
    scratch: ScratchModelConfig = Field(default_factory=ScratchModelConfig)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    max_query_tokens: int = Field(default=32, gt=0)
    max_reasoning_tokens: int = Field(default=8, ge=0)
    separator: str = " =>"


@dataclass(config=STRICT)
class SFTConfig:
    """Stage 1: ``sft_weight * NLL(reasoning target) + infonce_weight * InfoNCE``."""

    steps: int = Field(default=200, ge=0)
    batch_size: int = Field(default=64, gt=1)
    lr: float = Field(default=1e-3, gt=0)
    sft_weight: float = Field(default=1.0, ge=0)
    infonce_weight: float = Field(default=1.0, ge=0)
    temperature: float = Field(default=0.05, gt=0)
    checkpoint_every: int = Field(default=50, gt=0)


@dataclass(config=STRICT)
class LREMRLConfig:
    """Stage 2: ``group_size`` sampled reasonings per query; reward = ``reciprocal_rank`` of
    the first positive in the top ``k`` (0 when absent) or ``recall`` (1 when one is in it)."""

    steps: int = Field(default=50, ge=0)
    batch_size: int = Field(default=16, gt=1)
    group_size: int = Field(default=4, gt=1)
    sample_temperature: float = Field(default=1.0, gt=0)
    k: int = Field(default=50, gt=0)
    reward: Literal["reciprocal_rank", "recall"] = "reciprocal_rank"
    lr: float = Field(default=1e-4, gt=0)
    clip: float = Field(default=0.2, gt=0)
    beta: float = Field(default=0.04, ge=0)
    infonce_weight: float = Field(default=1.0, ge=0)
    temperature: float = Field(default=0.05, gt=0)
    checkpoint_every: int = Field(default=25, gt=0)
    index: IndexConfig = Field(default_factory=IndexConfig)


@dataclass(config=STRICT)
class RouterConfig:
    """Which queries LREM serves (the others use the plain query tower).

    ``all``: every query; ``overlap``: queries whose share of characters found in their top
    BM25 item is below ``overlap_below``; ``length``: queries of at least ``min_length``
    characters; ``tail``: queries seen at most ``tail_max_count`` times in the training pairs.
    """

    rule: Literal["all", "overlap", "length", "tail"] = "all"
    overlap_below: float = Field(default=0.5, ge=0, le=1)
    min_length: int = Field(default=12, gt=0)
    tail_max_count: int = Field(default=0, ge=0)


@dataclass(config=STRICT)
class LREMRunConfig:
    kind: Literal["lrem"]
    run_dir: str
    data: PairsConfig
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    infonce: InfoNCEConfig = Field(default_factory=InfoNCEConfig)
    lm: LMConfig = Field(default_factory=LMConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    rl: LREMRLConfig = Field(default_factory=LREMRLConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    init_from: str | None = None
    seed: int = 0
    device: str = "cpu"


def is_lrem(raw: Any) -> bool:
    """Whether a raw (YAML-loaded) config is an LREM run (``kind: lrem``)."""
    return raw_kind(raw) == KIND


def build_lrem_config(raw: dict[str, Any]) -> LREMRunConfig:
    """Validate a plain mapping (ConfigError names the field)."""
    return build_run(LREMRunConfig, raw)


def load_lrem_config(path: str | Path, overrides: list[str] | None = None) -> LREMRunConfig:
    """Load, override and validate a ``kind: lrem`` config."""
    return load_run(path, overrides, KIND, build_lrem_config)
