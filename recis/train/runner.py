"""Config -> data, model and trainer of one process, and the run directory's rules.

The run itself (one process or N, ``recis train`` / ``recis eval``) is
:mod:`recis.distributed.run`, which builds on these."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recis.config import RunConfig
from recis.errors import ConfigError, OutputError
from recis.io import reader_from_config
from recis.models import build_model
from recis.ops.cores import usable_cores
from recis.synthetic import Info, oracle_metrics
from recis.synthetic import prepare as prepare_synthetic

from .trainer import Trainer


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def eval_path(cfg: RunConfig) -> str | list[str] | None:
    """The eval data as configured: ``data.eval``, or the synthetic data's eval folder."""
    data = cfg.data
    return data.eval or (str(Path(data.path) / "eval") if data.synthetic else None)


def prepare_data(cfg: RunConfig) -> tuple[str | list[str], str | list[str] | None, Info | None]:
    """Train and eval paths; generates the synthetic data first when configured and absent."""
    data = cfg.data
    info = prepare_synthetic(data)
    train = data.train or (str(Path(data.path) / "train") if data.synthetic else None)
    evals = eval_path(cfg)
    if train is None:
        raise ConfigError("data.train: field required (or set data.synthetic)")
    return train, evals, info


def set_threads(threads: int | None, processes_here: int = 1) -> int:
    """Size torch's intra-op pool: ``threads`` when the config sets it, else
    ``OMP_NUM_THREADS`` when the launcher or user exported it (torch read it at start),
    else the cores this process may use (affinity mask and cgroup quota, not the machine's
    core count) shared among the run's processes on this node, so N processes on N cores
    do not each start N threads. Returns the pool size."""
    if threads:
        torch.set_num_threads(threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, usable_cores() // max(1, processes_here)))
    return torch.get_num_threads()


def readers(
    cfg: RunConfig, train_path: str | list[str], eval_path: str | list[str] | None, **shard: Any
) -> tuple[Any, Any]:
    """The train and eval readers of this process: the eval data's, or with
    ``data.holdout`` (no eval data) the tail of the training rows, which training then
    leaves out; no eval reader without either."""
    held = bool(cfg.data.holdout) and eval_path is None
    seed = {"seed": cfg.seed, **shard}
    train = reader_from_config(
        cfg.data, train_path, train=True, rows="fit" if held else "all", **seed
    )
    if eval_path is not None:
        return train, reader_from_config(cfg.data, eval_path, train=False, **seed)
    if held:
        return train, reader_from_config(cfg.data, train_path, train=False, rows="holdout", **seed)
    return train, None


def build(cfg: RunConfig, for_training: bool = True) -> tuple[Trainer, Info | None]:
    set_threads(cfg.threads)
    seed_everything(cfg.seed)
    train_path, eval_path, info = prepare_data(cfg)
    schema = cfg.data.schema_
    device = torch.device(cfg.device)
    train_data, eval_data = readers(cfg, train_path, eval_path)
    model = build_model(cfg.model, schema, device)
    trainer = Trainer(model, train_data, eval_data, cfg.train, run_dir=cfg.run_dir, device=device)
    return trainer, info


def report(result: dict[str, Any], info: Info | None) -> dict[str, Any]:
    """The eval result, with the synthetic data's oracle AUC beside it."""
    return {**result, **oracle_metrics(info)}


# what a run writes into its run directory (``--overwrite`` removes exactly these)
RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "tb", "eval.json", "config.yaml", "plots")
# what shows that a run directory holds a run
_RUN_MARKERS = ("checkpoints", "metrics.jsonl", "eval.json", "tb")


def claim_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Make ``run_dir`` ready for a new run: a directory holding a previous run is refused
    unless resuming it or ``overwrite`` (then the previous run's outputs, and nothing else,
    are removed). Also checks that it can be written to, before any training."""
    found = [n for n in _RUN_MARKERS if (run_dir / n).exists()]
    if found and not resume:
        if not overwrite:
            raise OutputError(
                f"{run_dir}: holds a previous run ({', '.join(found)}): pass --resume "
                f"{run_dir} to continue it or --overwrite to replace it"
            )
        for name in RUN_OUTPUTS:
            p = run_dir / name
            try:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                elif p.exists() or p.is_symlink():
                    p.unlink()
            except OSError as err:
                raise OutputError(f"{p}: cannot remove the previous run's output: {err}") from None
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{random.getrandbits(32):08x}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise OutputError(f"{run_dir}: run directory is not writable: {err.strerror}") from None


def write_output(path: Path, text: str) -> None:
    """Write a run output file; an OS error is one OutputError naming it."""
    try:
        path.write_text(text)
    except OSError as err:
        raise OutputError(f"{path}: cannot write: {err.strerror}") from None
