"""Typed, validated configuration.

Configs are pydantic dataclasses: every field is typed, unknown fields are
rejected, and a wrong value stops with a one-line message that names the
dotted field path, e.g. ``model.bottom_mlp.0: expected int, got 'abc'``.

YAML files load with :func:`load_config`; ``--set a.b=value`` overrides are
applied to the raw mapping before validation, so they are checked the same way.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from recis.errors import ConfigError
from recis.features import Schema

STRICT = ConfigDict(extra="forbid", strict=False, validate_assignment=True)

T = TypeVar("T")


@dataclass(config=STRICT)
class SyntheticConfig:
    """Built-in synthetic data: generated into ``DataConfig.path`` when absent."""

    kind: Literal["ctr", "retrieval", "relevance"] = "ctr"
    num_train: int = Field(default=200_000, gt=0)
    num_eval: int = Field(default=50_000, gt=0)
    files: int = Field(default=4, gt=0)
    seed: int = 0


@dataclass(config=STRICT)
class DataConfig:
    """Where the data is and how to read it.

    ``train`` and ``eval`` are a file, a directory, a glob or a list of them.
    With ``synthetic`` set, data is generated under ``path`` (``train/`` and
    ``eval/``) on first use and ``train``/``eval`` default to those folders.
    """

    schema_: Schema = Field(alias="schema")
    train: str | list[str] | None = None
    eval: str | list[str] | None = None
    format: Literal["parquet", "orc", "csv", "tsv"] = "parquet"
    batch_size: int = Field(default=1024, gt=0)
    eval_batch_size: int | None = Field(default=None, gt=0)
    shuffle: bool = True
    synthetic: SyntheticConfig | None = None
    path: str = "data/synthetic_ctr"


@dataclass(config=STRICT)
class TableConfig:
    """One embedding table. ``capacity`` is the number of rows."""

    name: str
    dim: int = Field(gt=0)
    capacity: int = Field(gt=0)
    pooling: Literal["sum", "mean", "none"] = "sum"


@dataclass(config=STRICT)
class ModelConfig:
    """Base of every model's config class: which model, and its embedding tables.

    Each model in :mod:`recis.models` subclasses this with its own fields; the
    ``model:`` section of a run config is validated against that subclass.
    """

    name: str = "dlrm"
    tables: list[TableConfig] = Field(default_factory=list)


@dataclass(config=STRICT)
class OptimizerConfig:
    name: Literal["adam", "adamw", "adagrad", "sgd"] = "adam"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)


@dataclass(config=STRICT)
class SparseOptimizerConfig:
    name: Literal["sgd", "adagrad", "rowwise_adagrad", "adam", "adamw"] = "rowwise_adagrad"
    lr: float = Field(default=0.05, gt=0)
    eps: float = Field(default=1e-8, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)


@dataclass(config=STRICT)
class TrainConfig:
    epochs: int = Field(default=1, gt=0)
    max_steps: int | None = Field(default=None, gt=0)
    dense_optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    sparse_optimizer: SparseOptimizerConfig = Field(default_factory=SparseOptimizerConfig)
    log_every: int = Field(default=50, gt=0)
    progress: bool = True


@dataclass(config=STRICT)
class RunConfig:
    """A whole run: data, model, training, and where outputs go."""

    data: DataConfig
    # validated against the named model's config class by :func:`build_run_config`
    model: Any = Field(default_factory=dict)
    train: TrainConfig = Field(default_factory=TrainConfig)
    run_dir: str = "runs/default"
    device: str = "cpu"
    seed: int = 0
    threads: int | None = Field(default=None, gt=0)


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    """One line per problem: ``dotted.path: message``."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if p != "schema_") or "<root>"
        loc = loc.replace("schema_", "schema")
        if prefix:
            loc = f"{prefix}.{loc}"
        kind = e["type"]
        if kind == "extra_forbidden":
            msg = "unknown field"
        elif kind == "missing":
            msg = "field required"
        elif "input" in e and kind.endswith(("_type", "_parsing")):
            expected = kind.split("_")[0]
            msg = f"expected {expected}, got {e['input']!r}"
        else:
            msg = e["msg"]
            if "input" in e and not isinstance(e["input"], dict | list):
                msg = f"{msg}, got {e['input']!r}"
        lines.append(f"{loc}: {msg}")
    return "; ".join(lines)


def validate(cls: type[T], raw: Any, prefix: str = "") -> T:
    """Build ``cls`` from a plain mapping, raising :class:`ConfigError` on any problem."""
    try:
        return TypeAdapter(cls).validate_python(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, prefix)) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value``; the value is parsed as YAML (``3`` -> int, ``[1,2]`` -> list)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, value = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r}: empty field name")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = value
    return parts, parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part) if isinstance(node, dict) else None
            if nxt is None:
                nxt = {}
                node[part] = nxt
            elif not isinstance(nxt, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(parts[: i + 1])} is not a mapping")
            node = nxt
        node[parts[-1]] = value
    return raw


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config ({err.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}".replace("\n", " ")) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load, override and validate a run config from YAML."""
    raw = apply_overrides(load_yaml(path), overrides or [])
    return build_run_config(raw)


def build_run_config(raw: dict[str, Any]) -> RunConfig:
    """Validate a whole run config, including the model section against its model's class."""
    from recis.models import model_config  # models import this module

    cfg = validate(RunConfig, raw)
    cfg.model = model_config(cfg.model if cfg.model is not None else {})
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain mapping of a config, with field aliases (``schema``) as written in YAML."""
    out = TypeAdapter(type(cfg)).dump_python(cfg, by_alias=True, mode="json")
    if isinstance(cfg, RunConfig) and not isinstance(cfg.model, dict):
        out["model"] = to_dict(cfg.model)
    return out


def replace(cfg: T, **changes: Any) -> T:
    return dataclasses.replace(cfg, **changes)
