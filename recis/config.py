"""Typed, validated configuration.

Configs are pydantic dataclasses: every field is typed, unknown fields are
rejected, and a wrong value stops with a one-line message that names the
dotted field path, e.g. ``model.bottom_mlp.0: expected int, got 'abc'``.

YAML files load with :func:`load_config`; ``--set a.b=value`` overrides are
applied to the raw mapping before validation, so they are checked the same way.

Strict on load (see docs/config.md, "strict configs"): YAML is read by
:class:`~recis.config_yaml.ConfigLoader` (plain YAML types only: any other tag, and a key given twice
in one mapping, is a ConfigError naming the line), and the raw mapping is validated
in pydantic's strict mode: no bool -> int, no float -> int, no str -> number or
bool; int -> float is allowed. Python code that builds config objects directly
keeps pydantic's usual coercion.
"""

from __future__ import annotations

import codecs
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, TypeAdapter, field_validator
from pydantic.dataclasses import dataclass

from recis.config_base import STRICT as STRICT
from recis.config_base import apply_overrides as apply_overrides
from recis.config_base import format_validation_error as format_validation_error
from recis.config_base import load_yaml as load_yaml
from recis.config_base import parse_override as parse_override
from recis.config_base import validate as validate
from recis.errors import ConfigError, OutputError, RecisError
from recis.features import Schema, check_task_labels


@dataclass(config=STRICT)
class SyntheticConfig:
    """Built-in synthetic data: generated into ``DataConfig.path`` when absent."""

    # ctr: recis.synthetic.generate_ctr; ctr_cvr: the two-task generate_ctr_cvr;
    # retrieval / relevance: generate_retrieval / generate_relevance (recis.synthetic)
    kind: Literal["ctr", "ctr_cvr", "retrieval", "relevance"] = "ctr"
    num_train: int = Field(default=200_000, gt=0)
    num_eval: int = Field(default=50_000, gt=0)
    files: int = Field(default=4, gt=0)
    seed: int = 0


@dataclass(config=STRICT)
class CsvConfig:
    """CSV/TSV parsing. ``layout: criteo`` is the Criteo TSV (label, I1..I13, C1..C26, no
    header); ``layout: hive`` Hive's text tables (``\\x01`` between fields, no header, no
    quoting, ``\\N`` and empty fields null; name the columns in ``column_names``).
    ``encoding``: the files' text encoding, a Python codec name (``gbk``, ``latin-1``);
    ``decimal_point``: ``,`` for numbers written ``0,5``. ``delimiter`` may be several
    characters (MovieLens 1M's ``::``); quotes do not protect such a delimiter inside a
    value."""

    layout: Literal["none", "criteo", "hive"] = "none"
    delimiter: str | None = None
    header: bool = True
    column_names: list[str] | None = None
    null_values: list[str] | None = None
    encoding: str = "utf8"
    decimal_point: str = Field(default=".", min_length=1, max_length=1)

    @field_validator("encoding")
    @classmethod
    def _codec(cls, name: str) -> str:
        try:
            codecs.lookup(name)
        except LookupError:
            raise ValueError(
                f"unknown encoding {name!r} (a Python codec name: utf8, gbk, latin-1, cp1252)"
            ) from None
        return name

    @field_validator("delimiter")
    @classmethod
    def _delimiter(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c in value for c in '"\r\n')):
            raise ValueError(
                f"{value!r}: a delimiter is one or more characters, no quote or newline"
            )
        return value

    def __post_init__(self) -> None:
        if self.decimal_point == self.delimiter:
            raise ValueError(f"decimal_point {self.decimal_point!r} is also the delimiter")


@dataclass(config=STRICT)
class DataConfig:
    """Where the data is and how to read it.

    ``train`` and ``eval`` are a file, a directory, a glob or a list of them.
    With ``synthetic`` set, data is generated under ``path`` (``train/`` and
    ``eval/``) on first use and ``train``/``eval`` default to those folders.

    Reader options (see ``docs/data.md``): ``nan_policy`` for null/NaN dense
    values, ``on_bad_row`` (``skip`` counts skipped rows per reason and writes
    them to ``quarantine``; an epoch whose skipped rows pass ``max_bad_fraction``
    of its rows, default 0.01, or whose rows are all bad, stops with a DataError),
    ``prefetch`` batches converted ahead in a background thread,
    ``on_missing_column: null`` reads a column that some files lack (added after they were
    written) as null in their rows, ``shuffle_buffer`` rows per shuffle chunk,
    ``num_workers`` DataLoader
    worker processes (0: read in the training process), ``pin_memory`` for
    fast copies to an accelerator. ``holdout``: without ``eval``, the last fraction of the
    training rows in file order is the eval data (early stopping) and is not trained on.
    """

    schema_: Schema = Field(alias="schema")
    train: str | list[str] | None = None
    eval: str | list[str] | None = None
    format: Literal["parquet", "orc", "csv", "tsv", "jsonl", "libsvm"] = "parquet"
    batch_size: int = Field(default=1024, gt=0)
    eval_batch_size: int | None = Field(default=None, gt=0)
    shuffle: bool = True
    synthetic: SyntheticConfig | None = None
    path: str = "data/synthetic_ctr"
    csv: CsvConfig = Field(default_factory=CsvConfig)
    nan_policy: Literal["fill", "raise"] = "fill"
    on_bad_row: Literal["raise", "skip"] = "raise"
    quarantine: str | None = None
    max_bad_fraction: float = Field(default=0.01, ge=0, le=1)
    on_missing_column: Literal["raise", "null"] = "raise"
    prefetch: int = Field(default=2, ge=0)
    shuffle_buffer: int = Field(default=65536, gt=0)
    num_workers: int = Field(default=0, ge=0)
    drop_last: bool = False
    pin_memory: bool = False
    holdout: float = Field(default=0.0, ge=0, lt=0.5)

    def __post_init__(self) -> None:
        if self.holdout and self.eval is not None:
            raise ValueError(
                "holdout: set data.eval or data.holdout, not both (to score another file with"
                " recis eval: --set data.holdout=0 --set data.eval=FILE)"
            )


@dataclass(config=STRICT)
class SparseOptimizerConfig:
    """Optimizer of embedding rows: ``train.sparse_optimizer`` (the one place; a table may
    override it with ``model.tables[i].optimizer``). See docs/config.md, "Optimizers".

    ``weight_decay`` couples as in torch: ``adamw`` decoupled (``w *= 1 - lr * wd``), every
    other name L2 (``g += wd * w``). :func:`recis.optim.spec.resolve_sparse` turns it into
    what runs it (fbgemm's fused kernels, recis' lazy row-wise Adam(W), a torch optimizer)
    or refuses, naming the field, what the chosen backend cannot honour.
    """

    name: Literal["sgd", "adagrad", "rowwise_adagrad", "adam", "adamw"] = "rowwise_adagrad"
    lr: float = Field(default=0.05, gt=0)
    eps: float = Field(default=1e-8, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.999, ge=0, lt=1)


@dataclass(config=STRICT)
class TableConfig:
    """One embedding table. ``capacity`` is the number of rows.

    Ids are mapped to rows by a collision-free :class:`recis.ops.IdMapper`
    (``mapper: hash``) or used as rows directly (``mapper: none``, ids must be in
    ``[0, capacity)``). See docs/embedding.md for admission/eviction semantics.
    """

    name: str
    dim: int = Field(gt=0)
    capacity: int = Field(gt=0)
    pooling: Literal["sum", "mean", "none"] = "sum"
    dtype: Literal["fp32", "fp16"] = "fp32"
    init: Literal["uniform", "normal", "zeros"] = "uniform"
    # uniform bound / normal std; default sqrt(1 / capacity) (torchrec's default)
    init_scale: float | None = Field(default=None, gt=0)
    mapper: Literal["hash", "none"] = "hash"
    admission_min_count: int = Field(default=1, ge=1)
    admission_prob: float = Field(default=1.0, gt=0, le=1)
    # what ids without a row read: a zero vector or one shared (fixed) random row
    default: Literal["zero", "shared"] = "zero"
    eviction: Literal["none", "lru", "lfu", "ttl"] = "none"
    ttl_steps: int | None = Field(default=None, gt=0)
    evict_fraction: float = Field(default=0.01, ge=0, le=1)
    growable: bool = False
    grow_at: float = Field(default=0.9, gt=0, le=1)
    max_capacity: int | None = Field(default=None, gt=0)
    # per-table override of train.sparse_optimizer
    optimizer: SparseOptimizerConfig | None = None

    def __post_init__(self) -> None:
        if self.eviction == "ttl" and self.ttl_steps is None:
            raise ValueError("eviction 'ttl' needs ttl_steps")
        if self.mapper == "none" and (
            self.eviction != "none"
            or self.growable
            or self.admission_min_count > 1
            or self.admission_prob < 1
        ):
            raise ValueError("mapper 'none' allows no admission, eviction or growth")
        if self.max_capacity is not None and self.max_capacity < self.capacity:
            raise ValueError("max_capacity must be >= capacity")


@dataclass(config=STRICT)
class ModelConfig:
    """Base of every model's config class: which model, and its embedding tables.

    Each model in :mod:`recis.models` subclasses this with its own fields; the
    ``model:`` section of a run config is validated against that subclass.
    """

    name: str = "dlrm"
    tables: list[TableConfig] = Field(default_factory=list)
    # optimizer of the embedding rows, filled from train.sparse_optimizer in a run config
    # (set there, not here: a different value here is refused); for models built in Python
    sparse_optimizer: SparseOptimizerConfig | None = None
    # hashed: zero-collision IdMapper + fbgemm (recis.embedding), tables kept whole on one
    # rank or split by id in distributed runs (distributed.sharding); modulo: torchrec EBC over id mod capacity, for pre-mapped ids
    # (sharded with torchrec's per-table plans)
    embedding: Literal["hashed", "modulo"] = "hashed"
    # a pruned model (recis prune): kept heads / FFN channels of each transformer layer by
    # module path, e.g. {"hetero.0": {"heads": 6, "ffn": 180}}; applied after building
    structure: dict[str, dict[str, int]] | None = None


@dataclass(config=STRICT)
class OptimizerConfig:
    """``train.dense_optimizer``: the torch optimizer of every non-embedding parameter.

    ``weight_decay`` couples as in torch (``adamw`` decoupled, the rest L2); ``eps``
    null keeps torch's default of the named optimizer (1e-8 Adam(W), 1e-10 Adagrad);
    ``beta1``/``beta2`` are Adam(W)'s.
    """

    name: Literal["adam", "adamw", "adagrad", "sgd"] = "adam"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    eps: float | None = Field(default=None, gt=0)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.999, ge=0, lt=1)


@dataclass(config=STRICT)
class TaskConfig:
    """One training task: which loss, and how it ranks against the others.

    ``priority`` 0 is the most important; larger numbers are less important.
    ``tolerance`` is how far (relative) the task's loss may rise above its
    reference level while lower-priority tasks train (objective ``priority``).
    ``weight`` is used only by objective ``weighted_sum``. ``group_column``
    names the GAUC grouping column (``batch.extras[...]``, or a single-valued
    sparse feature of that name).
    """

    name: str
    loss: Literal["bce", "mse"] = "bce"
    priority: int = Field(default=0, ge=0)
    tolerance: float = Field(default=0.05, ge=0)
    weight: float = Field(default=1.0, ge=0)
    group_column: str | None = None


@dataclass(config=STRICT)
class PriorityConfig:
    """Options of the Lagrangian priority objective (see docs/multitask.md).

    ``stage_steps``: optimizer steps each priority level trains before the next
    level joins (its losses then set the reference levels); give the level
    enough steps to converge alone. ``multiplier_lr``: dual ascent rate on the
    tracked violation measured in units of the task's tolerance band.
    ``damping``: weight of the current batch's violation (same units) added to
    the multiplier in the primal step (Platt and Barr's damping). ``ema``:
    per-step smoothing of the tracked per-task losses the dual step and the
    references read (0.9: about 20 steps of memory, short enough not to lag the
    primal dynamics into oscillation).
    """

    stage_steps: int = Field(default=200, ge=0)
    multiplier_lr: float = Field(default=1.0, gt=0)
    damping: float = Field(default=5.0, ge=0)
    ema: float = Field(default=0.9, ge=0, lt=1)


@dataclass(config=STRICT)
class ScheduleConfig:
    """Dense learning-rate schedule: linear warmup, then constant, cosine or linear decay."""

    name: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = Field(default=0, ge=0)
    total_steps: int | None = Field(default=None, gt=0)
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1)


@dataclass(config=STRICT)
class EarlyStoppingConfig:
    """Stop when eval ``metric`` (e.g. ``click/auc``) has not improved for ``patience`` evals."""

    metric: str
    mode: Literal["max", "min"] = "max"
    patience: int = Field(default=3, gt=0)
    min_delta: float = Field(default=0.0, ge=0)
    # at the end, load the best evaluation's checkpoint: ``final`` and the final eval are it
    restore_best: bool = False


@dataclass(config=STRICT)
class TrainConfig:
    """Training options. ``tasks`` empty: every model output is a BCE task of weight 1."""

    epochs: int = Field(default=1, gt=0)
    max_steps: int | None = Field(default=None, gt=0)
    dense_optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    sparse_optimizer: SparseOptimizerConfig = Field(default_factory=SparseOptimizerConfig)
    log_every: int = Field(default=50, gt=0)
    progress: bool = True
    tasks: list[TaskConfig] = Field(default_factory=list)
    objective: Literal["weighted_sum", "priority"] = "weighted_sum"
    priority: PriorityConfig = Field(default_factory=PriorityConfig)
    eval_every: int | None = Field(default=None, gt=0)
    eval_each_epoch: bool = False  # also evaluate at the end of every epoch
    eval_batches: int | None = Field(default=None, gt=0)
    checkpoint_every: int | None = Field(default=None, gt=0)
    keep_last: int = Field(default=3, gt=0)
    grad_accum: int = Field(default=1, gt=0)
    clip: float | None = Field(default=None, gt=0)
    bf16: bool = False
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    early_stopping: EarlyStoppingConfig | None = None
    tensorboard: bool = True
    # look the next batch's ids up in the background during this step (hashed tables):
    # auto = on a GPU, or when torch's threads leave a core of the process's share free
    map_ahead: Literal["auto", "on", "off"] = "auto"


ShardingKind = Literal["table_wise", "row_wise", "column_wise", "data_parallel", "auto"]


@dataclass(config=STRICT)
class DistributedConfig:
    """Multi-process training (see docs/distributed.md).

    ``launcher``: ``none`` (one process), ``torchrun``, ``horovod`` or ``auto`` (detected
    from the environment the launcher sets); ``recis train --launcher`` overrides it.
    ``sharding`` maps a table name to how it is split over ranks; other tables use
    ``default_sharding``. Sharded checkpoints follow ``train.checkpoint_every``; a run
    restarted by ``torchrun --max-restarts`` resumes from the latest.
    """

    launcher: Literal["none", "auto", "torchrun", "horovod"] = "auto"
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    default_sharding: ShardingKind = "auto"
    sharding: dict[str, ShardingKind] = Field(default_factory=dict)


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
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)


# name -> config class of each model, filled by :mod:`recis.models` when it is imported: the
# models sit above this module (they import it), so it cannot import them to look one up
_MODEL_CONFIGS: dict[str, type[ModelConfig]] = {}


def register_model_configs(configs: Mapping[str, type[ModelConfig]]) -> None:
    """Let run configs name these models: ``{model name: its config class}``."""
    _MODEL_CONFIGS.update(configs)


def model_config(raw: dict[str, Any] | ModelConfig) -> ModelConfig:
    """Validate a ``model:`` mapping against the config class of the model it names."""
    if isinstance(raw, ModelConfig):
        return raw
    name = raw.get("name", "dlrm") if isinstance(raw, dict) else None
    if not isinstance(name, str):
        raise ConfigError(f"model.name: expected str, got {name!r}")
    if not _MODEL_CONFIGS:  # a program error, not a config one
        raise RecisError("recis.config: no model is registered; import recis.models first")
    if name not in _MODEL_CONFIGS:
        raise ConfigError(f"model.name: unknown model {name!r}; known: {sorted(_MODEL_CONFIGS)}")
    return validate(_MODEL_CONFIGS[name], raw, prefix="model")


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load, override and validate a run config from YAML."""
    raw = apply_overrides(load_yaml(path), overrides or [])
    return build_run_config(raw)


def build_run_config(raw: dict[str, Any]) -> RunConfig:
    """Validate a whole run config, including the model section against its model's class."""
    return complete_run_config(validate(RunConfig, raw))


def complete_run_config(cfg: RunConfig) -> RunConfig:
    """What a run config validated as :class:`RunConfig` still needs: the device checked (this
    loads torch), the labels against the tasks, the model section against its model's class
    (the zoo registered) and the one sparse optimizer."""
    check_device(cfg.device)
    check_task_labels(cfg.data.schema_.labels, [(t.name, t.loss) for t in cfg.train.tasks])
    cfg.model = model_config(cfg.model if cfg.model is not None else {})
    _one_sparse_optimizer(cfg)
    return cfg


def _one_sparse_optimizer(cfg: RunConfig) -> None:
    """The embedding optimizer is declared once, in ``train.sparse_optimizer``; the model
    section's copy is filled from it. A ``model.sparse_optimizer`` that differs (older
    configs set it there) is refused naming both fields; an equal one (a run's saved
    config.yaml from before) is accepted."""
    if not isinstance(cfg.model, ModelConfig):
        return
    given, train = cfg.model.sparse_optimizer, cfg.train.sparse_optimizer
    if given is not None and given != train:
        raise ConfigError(
            f"model.sparse_optimizer: {to_dict(given)} differs from train.sparse_optimizer: "
            f"{to_dict(train)}; the embedding optimizer is set once, in "
            "train.sparse_optimizer (remove model.sparse_optimizer)"
        )
    cfg.model.sparse_optimizer = train


_DEVICE = re.compile(r"^(cpu|cuda|mps)(:(0|[1-9][0-9]*))?$")


def check_device(device: str) -> None:
    """Refuse a ``device`` this machine cannot train on, in one ConfigError line.

    ``cpu``, ``cuda``, ``cuda:N`` (N below the number of visible GPUs) and ``mps`` are
    devices; ``cuda`` needs a GPU that torch can see.
    """
    m = _DEVICE.match(device)
    if m is None:
        raise ConfigError(f"device: {device!r} is not a device (expected cpu, cuda, cuda:N or mps)")
    import torch  # only here: loading a config does not need torch otherwise

    kind, index = m.group(1), m.group(3)
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(
                f"device: {device!r} asked but no CUDA device is available "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
                "use device: cpu"
            )
        if index is not None and int(index) >= count:
            raise ConfigError(f"device: {device!r} asked but only cuda:0..{count - 1} exist")
    elif kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device: {device!r} asked but MPS is not available")


def _writable_dir(path: Path, what: str) -> None:
    """Refuse ``path`` (a directory to be written into, made if absent) unless a file can be
    created there: in it if it exists, else in its nearest existing parent."""
    probe_in = path
    while not probe_in.exists():
        if probe_in.parent == probe_in:
            break
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise OutputError(f"{path}: {what} cannot be made: {probe_in} is not a directory")
    try:  # a real write: access() says yes to root on a read-only filesystem
        fd, name = tempfile.mkstemp(prefix=".recis-write-test-", dir=probe_in)
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        raise OutputError(f"{path}: {what} is not writable ({err.strerror})") from None


def _writable_file(path: Path, what: str) -> None:
    """Refuse an output file that exists but cannot be appended to, or whose folder cannot
    be written."""
    if path.is_dir():
        raise OutputError(f"{path}: {what} is a directory")
    if path.exists():
        try:
            with open(path, "a"):
                pass
        except OSError as err:
            raise OutputError(f"{path}: {what} is not writable ({err.strerror})") from None
    _writable_dir(path.parent, f"folder of the {what}")


def check_outputs(cfg: RunConfig) -> None:
    """Check, before any data is read or generated, that every path the run writes can be
    written: the run directory (checkpoints, metrics, TensorBoard logs, eval result), the
    quarantine file of skipped rows, and the synthetic data folder when the data is to be
    generated. Nothing is created; a path that cannot be written is one OutputError line
    naming it."""
    run_dir = Path(cfg.run_dir)
    _writable_dir(run_dir, "run directory")
    for name in ("checkpoints", "tb", "plots"):
        if (run_dir / name).exists():
            _writable_dir(run_dir / name, "run output folder")
    for name in ("metrics.jsonl", "eval.json", "config.yaml"):
        if (run_dir / name).exists():
            _writable_file(run_dir / name, "run output file")
    if cfg.data.quarantine is not None:
        _writable_file(Path(cfg.data.quarantine), "quarantine file (data.quarantine)")
    generated = cfg.data.synthetic is not None and not cfg.data.train
    if generated and not (Path(cfg.data.path) / "info.json").exists():
        _writable_dir(Path(cfg.data.path), "synthetic data folder (data.path)")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain mapping of a config, with field aliases (``schema``) as written in YAML."""
    out = TypeAdapter(type(cfg)).dump_python(cfg, by_alias=True, mode="json")
    if isinstance(cfg, RunConfig) and not isinstance(cfg.model, dict):
        out["model"] = to_dict(cfg.model)
        # filled from train.sparse_optimizer on load: written once, where it is set
        out["model"].pop("sparse_optimizer", None)
    return out
