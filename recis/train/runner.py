"""Config -> data, model, trainer: what ``recis train`` and ``recis eval`` do."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from recis.config import RunConfig, to_dict
from recis.io import (
    ParquetReader,
    generate_ctr,
    generate_relevance,
    generate_retrieval,
    load_info,
)
from recis.io.synthetic import SyntheticInfo
from recis.models import build_model

from .checkpoint import load_checkpoint
from .trainer import Trainer


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_data(
    cfg: RunConfig,
) -> tuple[str | list[str], str | list[str] | None, SyntheticInfo | None]:
    """Train and eval paths; generates the synthetic data first when configured and absent."""
    data = cfg.data
    info = None
    if data.synthetic is not None:
        info = load_info(data.path)
        s = data.synthetic
        wanted = (s.num_train, s.num_eval, s.seed)
        if info is None or (info.num_train, info.num_eval, info.seed) != wanted:
            print(f"generating synthetic {s.kind} data in {data.path} ...", flush=True)
            generate = {
                "ctr": generate_ctr,
                "retrieval": generate_retrieval,
                "relevance": generate_relevance,
            }[s.kind]
            info = generate(data.path, s.num_train, s.num_eval, s.files, s.seed)
    train = data.train or (str(Path(data.path) / "train") if data.synthetic else None)
    evals = data.eval or (str(Path(data.path) / "eval") if data.synthetic else None)
    if train is None:
        from recis.errors import ConfigError

        raise ConfigError("data.train: field required (or set data.synthetic)")
    return train, evals, info


def build(cfg: RunConfig, for_training: bool = True) -> tuple[Trainer, SyntheticInfo | None]:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    train_path, eval_path, info = prepare_data(cfg)
    schema = cfg.data.schema_
    device = torch.device(cfg.device)
    train_data = ParquetReader(
        train_path, schema, cfg.data.batch_size, shuffle=cfg.data.shuffle, seed=cfg.seed
    )
    eval_data = None
    if eval_path is not None:
        eval_data = ParquetReader(
            eval_path, schema, cfg.data.eval_batch_size or cfg.data.batch_size
        )
    model = build_model(cfg.model, schema, device)
    trainer = Trainer(model, train_data, eval_data, cfg.train, run_dir=cfg.run_dir, device=device)
    return trainer, info


def report(result: dict[str, float], info: SyntheticInfo | None) -> dict[str, Any]:
    out: dict[str, Any] = dict(result)
    if info is not None:
        out["oracle_auc"] = info.oracle_auc
    return out


def train(cfg: RunConfig) -> dict[str, Any]:
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    trainer, info = build(cfg)
    result = report(trainer.fit(), info)
    (run_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def evaluate(cfg: RunConfig, checkpoint: str | Path) -> dict[str, Any]:
    trainer, info = build(cfg)
    state, _ = load_checkpoint(checkpoint, map_location=cfg.device)
    trainer.load_state_dict(state)
    return report(trainer.evaluate(), info)
