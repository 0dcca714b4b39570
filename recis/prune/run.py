"""``recis prune``: prune a trained run into a new, smaller run directory.

The output holds ``config.yaml`` (the run's config with ``model.structure``, the kept shape
of every pruned layer, and ``run_dir`` set to the output), ``checkpoints/final`` (the
pruned weights) and ``prune.json`` (what was removed, parameters before/after, time), so
``recis eval OUT/config.yaml --checkpoint OUT/checkpoints/final`` evaluates it and
``build_model`` rebuilds it. With a recovery fine-tune (``--finetune-steps``) the pruned
weights are ``checkpoints/pruned`` and the fine-tuned ones ``checkpoints/final``.

Calibration rows are read by the run's own reader (``recis.io``) from ``--calibration``
files or else the run's training data, in file order, ``samples`` rows.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
import yaml

from recis.config import RunConfig, load_config, to_dict
from recis.errors import ConfigError, OutputError
from recis.io import reader_from_config
from recis.io.batch import Batch
from recis.models import build_model
from recis.models.structure import structure_of
from recis.train.checkpoint import load_checkpoint, save_checkpoint

from .finetune import PRUNED, FinetuneOptions, finetune_run
from .slimgpt import PruneOptions, PruneReport, prune_model


def source_checkpoint(run_dir: Path, checkpoint: str | Path | None = None) -> Path:
    """The checkpoint to prune: ``checkpoint``, else the run's ``best``, ``final`` or newest."""
    if checkpoint is not None:
        return Path(checkpoint)
    folder = run_dir / "checkpoints"
    for name in ("best", "final"):
        if (folder / name).is_dir():
            return folder / name
    steps = sorted(folder.glob("step-*")) if folder.is_dir() else []
    if not steps:
        raise ConfigError(f"{run_dir}: no checkpoints/best, final or step-N to prune")
    return steps[-1]


def calibration_batches(
    cfg: RunConfig, paths: str | list[str] | None = None, samples: int = 256
) -> list[Batch]:
    """The first ``samples`` rows of ``paths`` (default: the run's training data), read by
    the run's reader in file order (no shuffling), as batches on the run's device."""
    if samples <= 0:
        raise ConfigError(f"prune.samples: {samples} must be > 0")
    source = paths if paths is not None else cfg.data.train
    if source is None:
        raise ConfigError("prune: --calibration FILE needed (the run has no data.train)")
    size = min(samples, cfg.data.batch_size)
    data = copy.copy(cfg.data)  # the run's reader settings, batches of the calibration size
    data.eval_batch_size = size
    reader = reader_from_config(data, source, train=False, seed=cfg.seed)
    out: list[Batch] = []
    rows = 0
    for batch in reader:
        out.append(batch.to(cfg.device))
        rows += batch.batch_size
        if rows >= samples:
            break
    if not out:
        raise ConfigError(f"prune: no calibration rows in {source}")
    return out


def load_run_model(cfg: RunConfig, checkpoint: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The run's model with the checkpoint's weights, and the checkpoint's meta."""
    model = build_model(cfg.model, cfg.data.schema_, cfg.device)
    state, meta = load_checkpoint(checkpoint, map_location=cfg.device)
    if not isinstance(state.get("model"), dict):
        raise ConfigError(f"{checkpoint}: holds no model weights")
    model.load_state_dict(state["model"])
    return model, meta


def prune_run(
    run_dir: str | Path,
    out: str | Path,
    options: PruneOptions,
    calibration: str | list[str] | None = None,
    samples: int = 256,
    checkpoint: str | Path | None = None,
    finetune: FinetuneOptions | None = None,
) -> PruneReport:
    """Prune the model of ``run_dir`` into the run directory ``out`` (see the module doc);
    with ``finetune``, the pruned weights go to ``checkpoints/pruned`` and a recovery
    fine-tune (:func:`recis.prune.finetune.finetune_run`) writes ``checkpoints/final``."""
    run_dir, out = Path(run_dir), Path(out)
    cfg = load_config(run_dir / "config.yaml")
    if options.method == "magnitude":
        batches: list[Batch] = []
    else:
        batches = calibration_batches(cfg, calibration, samples)
    source = source_checkpoint(run_dir, checkpoint)
    model, meta = load_run_model(cfg, source)
    report = prune_model(model, options, batches)
    name = "final" if finetune is None else PRUNED
    meta = {**meta, "pruned_from": str(source)}
    write_pruned_run(cfg, model, out, meta, report, options, name)
    if finetune is not None:
        result = finetune_run(out, finetune)
        record = json.loads((out / "prune.json").read_text())
        record["finetune"] = {**dataclasses.asdict(finetune), "eval": result}
        (out / "prune.json").write_text(json.dumps(record, indent=1) + "\n")
    return report


def write_pruned_run(
    cfg: RunConfig,
    model: torch.nn.Module,
    out: Path,
    meta: dict[str, Any],
    report: PruneReport,
    options: PruneOptions,
    name: str = "final",
) -> None:
    """``out/config.yaml`` (with ``model.structure``), ``out/checkpoints/NAME``, ``prune.json``."""
    if (out / "checkpoints").exists() or (out / "config.yaml").exists():
        raise OutputError(f"{out}: holds a run already; pick another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{out}: cannot create: {err.strerror}") from None
    assert cfg.model is not None
    cfg.model.structure = structure_of(model)
    cfg.run_dir = str(out)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    save_checkpoint(out / "checkpoints" / name, {"model": model.state_dict()}, meta)
    record = {
        "options": dataclasses.asdict(options),
        "layers": report.layers,
        "params_before": report.params_before,
        "params_after": report.params_after,
        "params_ratio": report.params_after / max(1, report.params_before),
        "seconds": report.seconds,
        "pruned_from": meta.get("pruned_from"),
    }
    (out / "prune.json").write_text(json.dumps(record, indent=1) + "\n")
