"""Configs of a relevance-LLM run (``kind: relevance_llm``): model, data, prompt, stages.

A run is one YAML file whose top level says ``kind: relevance_llm``; ``recis train`` routes it
here instead of the sparse-dense trainer. The stages (SFT, DPO, GRPO and its variants) are
chained in ``stages``: each starts from the model the stage before it wrote (or the one its
``init`` names) and writes its own under ``run_dir/stages/<name>/model``.

Validation is as strict as recis' own configs (:func:`recis.config.validate`): unknown fields,
wrong types and bad values are one :class:`~recis.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass

from recis.config import STRICT, apply_overrides, load_yaml, validate
from recis.errors import ConfigError

KIND = "relevance_llm"
PLACEHOLDERS = frozenset({"query", "title", "attributes", "context"})


@dataclass(config=STRICT)
class ScratchModelConfig:
    """A random-initialised Llama and a BPE tokenizer trained on the training text (for tests,
    benchmarks and CPU experiments; production runs name a local HF model directory)."""

    hidden_size: int = Field(default=64, ge=8)
    layers: int = Field(default=2, ge=1)
    heads: int = Field(default=4, ge=1)
    vocab_size: int = Field(default=1000, ge=64)
    max_positions: int = Field(default=512, ge=16)
    seed: int = 0


@dataclass(config=STRICT)
class LoraSettings:
    """LoRA adapters (peft) trained in every stage instead of all weights; each stage's model
    is saved merged (a plain HF directory the next stage starts from).

    Args:
        r, alpha, dropout: LoRA rank, scaling and dropout.
        target_modules: module names to adapt (peft's ``all-linear``: every linear layer but
            the output head).
    """

    r: int = Field(default=8, ge=1)
    alpha: int = Field(default=16, ge=1)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


@dataclass(config=STRICT)
class LLMModelConfig:
    """Where the causal LM comes from: ``path`` (a local HF directory with its tokenizer) or
    ``scratch`` (built and saved under ``run_dir/base``). Exactly one of them. ``lora``:
    train LoRA adapters (peft) instead of all weights."""

    path: str | None = None
    scratch: ScratchModelConfig | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    lora: LoraSettings | None = None

    @model_validator(mode="after")
    def _one_source(self) -> LLMModelConfig:
        if (self.path is None) == (self.scratch is None):
            raise ValueError("give exactly one of path (a local HF model) and scratch")
        return self


@dataclass(config=STRICT)
class RelevanceDataConfig:
    """Labelled (query, item) pairs in parquet / CSV / TSV files.

    Args:
        train, eval: file paths (eval: scored after every stage).
        query, title, label: column names.
        attributes: item attribute columns (e.g. brand, category); each becomes a rationale
            step and is shown in the prompt as ``name: value``.
        context: column holding a context chunk for the prompt (optional).
        max_train, max_eval: use at most this many rows (the first ones), None: all.
    """

    train: str
    eval: str | None = None
    query: str = "query"
    title: str = "title"
    label: str = "label"
    attributes: list[str] = Field(default_factory=list)
    context: str | None = None
    max_train: int | None = Field(default=None, ge=1)
    max_eval: int | None = Field(default=None, ge=1)


@dataclass(config=STRICT)
class LevelsConfig:
    """The graded label: ``names[k]`` is the text the model writes for level ``k`` (each must
    be one token of the tokenizer), levels ``>= relevant_from`` count as relevant for AUC."""

    names: list[str] = Field(default_factory=lambda: ["0", "1", "2", "3"], min_length=2)
    relevant_from: int = Field(default=2, ge=1)

    @model_validator(mode="after")
    def _check(self) -> LevelsConfig:
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"names: repeated level name in {self.names}")
        if self.relevant_from >= len(self.names):
            raise ValueError(f"relevant_from: {self.relevant_from} is past the last level")
        return self


@dataclass(config=STRICT)
class PromptConfig:
    """The prompt template and the answer layout.

    Args:
        template: Python format text with ``{query}``, ``{title}``, and optionally
            ``{attributes}`` and ``{context}``.
        answer: ``first``: the completion starts with the level and the rationale follows
            (our reading of TaoSR1's post-CoT layout: serving reads the level token right
            after the prompt); ``last``: rationale, then the level.
        rationale: write the rationale steps (False: the completion is the level alone).
    """

    template: str = "query: {query}\nitem: {title}{attributes}{context}\n"
    answer: Literal["first", "last"] = "first"
    rationale: bool = True
    quantile: float = Field(default=0.5, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _check(self) -> PromptConfig:
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None}
        except ValueError as err:
            raise ValueError(f"template: {err}") from None
        unknown = names - PLACEHOLDERS
        if unknown:
            raise ValueError(f"template: unknown placeholder(s) {sorted(unknown)}")
        if not {"query", "title"} <= names:
            raise ValueError("template: needs {query} and {title}")
        return self


@dataclass(config=STRICT)
class RetrieverConfig:
    """Where DyKnow-RAG's context chunk comes from: a text corpus (one chunk per row of
    ``text``) searched with ``kind: bm25`` (``k1``, ``b``) or ``kind: dense``, the dual encoder
    of a trained ``retrieval_grpo`` run (``run_config``: its config file; ``stage``: its
    ``infonce`` or ``grpo`` model), which encodes the corpus with its item tower and each
    query with its query tower."""

    corpus: str
    text: str = "text"
    kind: Literal["bm25", "dense"] = "bm25"
    k1: float = Field(default=1.2, gt=0)
    b: float = Field(default=0.75, ge=0, le=1)
    run_config: str | None = None
    stage: Literal["infonce", "grpo"] = "infonce"

    @model_validator(mode="after")
    def _check(self) -> RetrieverConfig:
        if self.kind == "dense" and self.run_config is None:
            raise ValueError("run_config: kind dense needs a retrieval_grpo config file")
        return self


@dataclass(config=STRICT)
class TrainerArgs:
    """What every stage shares (passed to the trl trainer's config)."""

    name: str | None = None
    init: str | None = None
    max_steps: int = Field(default=50, ge=1)
    batch_size: int = Field(default=8, ge=1)
    learning_rate: float = Field(default=1e-4, gt=0)
    save_steps: int = Field(default=0, ge=0)
    logging_steps: int = Field(default=10, ge=1)
    seed: int = 0


@dataclass(config=STRICT)
class SFTStage(TrainerArgs):
    """Supervised fine-tuning on prompt -> (rationale, level) completions (TaoSR1 stage 1)."""

    kind: Literal["sft"] = "sft"


@dataclass(config=STRICT)
class DPOStage(TrainerArgs):
    """Offline pass@N sampling -> (correct, wrong) pairs -> DPO (TaoSR1 stage 2)."""

    kind: Literal["dpo"] = "dpo"
    samples: int = Field(default=4, ge=2)
    pool: int = Field(default=256, ge=1)
    beta: float = Field(default=0.1, gt=0)
    max_completion_length: int = Field(default=24, ge=1)
    temperature: float = Field(default=1.0, gt=0)


@dataclass(config=STRICT)
class GRPOStage(TrainerArgs):
    """GRPO with a verifiable label reward (TaoSR1 stage 3) and difficulty-based dynamic
    sampling: groups whose rollouts are all right or all wrong are dropped (``drop``) or keep
    ``downweight`` of their weight in the loss (``none``: trl's plain GRPO). ``batch_size``
    counts completions per step (a multiple of ``num_generations``); ``pool``: train on the
    first ``pool`` examples only; ``prefilter: N``: before training, sample N completions per
    example from the start model and keep only the examples it gets sometimes right and
    sometimes wrong (the offline side of dynamic sampling; plain ``grpo`` stages only)."""

    kind: Literal["grpo"] = "grpo"
    num_generations: int = Field(default=8, ge=2)
    max_completion_length: int = Field(default=24, ge=1)
    temperature: float = Field(default=1.0, gt=0)
    beta: float = Field(default=0.0, ge=0)
    dynamic_sampling: Literal["drop", "downweight", "none"] = "drop"
    downweight: float = Field(default=0.1, ge=0, le=1)
    pool: int | None = Field(default=None, ge=1)
    prefilter: int | None = Field(default=None, ge=2)


@dataclass(config=STRICT)
class AGRLStage(GRPOStage):
    """TaoSR-AGRL: rule-aware reward (label reward plus a dense reward per rationale step) and
    adaptive guided replay (a group below ``replay_below`` accuracy gets its worst rollout
    replaced by the ground-truth completion)."""

    kind: Literal["agrl"] = "agrl"  # type: ignore[assignment]  # a narrower tag than the base's
    label_weight: float = Field(default=1.0, ge=0)
    rule_weight: float = Field(default=0.5, ge=0)
    replay_below: float = Field(default=0.25, ge=0, le=1)


@dataclass(config=STRICT)
class SHEStage(GRPOStage):
    """TaoSR-SHE: step rewards from a generative step reward model (trained here on labelled
    steps) blended with the offline verifier (the rule checker); diversified data filtering
    and an easy -> hard curriculum by the start model's accuracy."""

    kind: Literal["she"] = "she"  # type: ignore[assignment]  # a narrower tag than the base's
    label_weight: float = Field(default=1.0, ge=0)
    step_weight: float = Field(default=0.5, ge=0)
    verifier_weight: float = Field(default=0.5, ge=0, le=1)
    reward_model_steps: int = Field(default=50, ge=1)
    reward_model_lr: float = Field(default=1e-3, gt=0)
    curriculum_stages: int = Field(default=2, ge=1)
    max_per_title: int = Field(default=2, ge=1)


@dataclass(config=STRICT)
class DyKnowStage(GRPOStage):
    """DyKnow-RAG: each query gets ``num_generations / 2`` rollouts without context and as many
    with one retrieved chunk; advantages are scaled between the groups by the per-query
    correctness gap (``alpha``); the RL pool is prioritised by the start model's uncertainty."""

    kind: Literal["dyknow"] = "dyknow"  # type: ignore[assignment]  # a narrower tag than the base's
    alpha: float = Field(default=1.0, ge=0)
    min_scale: float = Field(default=0.2, ge=0)


Stage = Annotated[
    SFTStage | DPOStage | GRPOStage | AGRLStage | SHEStage | DyKnowStage,
    Field(discriminator="kind"),
]


@dataclass(config=STRICT)
class RelevanceLLMConfig:
    """A whole relevance-LLM run.

    Example::

        kind: relevance_llm
        run_dir: runs/relevance
        model: {scratch: {hidden_size: 64, layers: 2}}
        data: {train: train.parquet, eval: test.parquet, attributes: [brand]}
        levels: {names: ["0", "1", "2"], relevant_from: 2}
        stages:
          - {kind: sft, max_steps: 200}
          - {kind: grpo, max_steps: 50}
    """

    kind: Literal["relevance_llm"]
    run_dir: str
    model: LLMModelConfig
    data: RelevanceDataConfig
    stages: list[Stage] = Field(min_length=1)
    levels: LevelsConfig = Field(default_factory=LevelsConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    retriever: RetrieverConfig | None = None
    device: str = "cpu"
    eval_batch_size: int = Field(default=32, ge=1)
    tensorboard: bool = False

    @model_validator(mode="after")
    def _check(self) -> RelevanceLLMConfig:
        names: list[str] = []
        for i, stage in enumerate(self.stages):
            if stage.name is None:
                stage.name = stage.kind if stage.kind not in names else f"{stage.kind}{i}"
            if stage.name in names or stage.name == "base":
                raise ValueError(f"stages.{i}.name: {stage.name!r} is used twice (or 'base')")
            if stage.init is not None and stage.init not in ["base", *names]:
                raise ValueError(
                    f"stages.{i}.init: {stage.init!r} is no earlier stage (one of {['base', *names]})"
                )
            if isinstance(stage, GRPOStage) and stage.batch_size % stage.num_generations:
                raise ValueError(
                    f"stages.{i}.batch_size: {stage.batch_size} completions per step is no "
                    f"multiple of num_generations {stage.num_generations}"
                )
            if isinstance(stage, GRPOStage) and stage.prefilter and stage.kind != "grpo":
                raise ValueError(f"stages.{i}.prefilter: only for kind grpo")
            if isinstance(stage, DyKnowStage):
                if self.retriever is None:
                    raise ValueError(f"stages.{i}: dyknow needs a retriever section")
                if stage.num_generations % 2:
                    raise ValueError(f"stages.{i}.num_generations: must be even for dyknow")
            names.append(stage.name)
        return self


def is_relevance_llm(raw: Any) -> bool:
    """Whether a raw (YAML-loaded) config is a relevance-LLM run (``kind: relevance_llm``)."""
    return isinstance(raw, dict) and raw.get("kind") == KIND


def load_llm_config(path: str | Path, overrides: list[str] | None = None) -> RelevanceLLMConfig:
    """Load, override and validate a relevance-LLM config (ConfigError names the field)."""
    raw = apply_overrides(load_yaml(path), overrides or [])
    if not is_relevance_llm(raw):
        raise ConfigError(f"{path}: kind: expected {KIND!r}, got {raw.get('kind')!r}")
    return build_llm_config(raw)


def build_llm_config(raw: dict[str, Any]) -> RelevanceLLMConfig:
    """Validate a plain mapping into a :class:`RelevanceLLMConfig`."""
    cfg = validate(RelevanceLLMConfig, raw)
    from recis.config import check_device

    check_device(cfg.device)
    return cfg
