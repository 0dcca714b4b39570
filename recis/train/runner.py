"""Config -> data, model, trainer: what ``recis train`` and ``recis eval`` do."""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from recis.config import RunConfig, to_dict
from recis.errors import ConfigError
from recis.io import (
    MultiTaskInfo,
    generate_ctr,
    generate_ctr_cvr,
    generate_relevance,
    generate_retrieval,
    load_info,
    reader_from_config,
)
from recis.io.synthetic import SyntheticInfo
from recis.models import build_model

from .checkpoint import latest_checkpoint, load_checkpoint
from .trainer import Trainer

Info = SyntheticInfo | MultiTaskInfo


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _synthetic(cfg: RunConfig) -> Info:
    data, s = cfg.data, cfg.data.synthetic
    assert s is not None
    info_path = Path(data.path) / "info.json"
    wanted = (s.num_train, s.num_eval, s.seed)
    if s.kind == "ctr_cvr":
        if info_path.exists():
            mt = MultiTaskInfo(**json.loads(info_path.read_text()))
            if (mt.num_train, mt.num_eval, mt.seed) == wanted:
                return mt
        print(f"generating synthetic {s.kind} data in {data.path} ...", flush=True)
        return generate_ctr_cvr(data.path, s.num_train, s.num_eval, s.files, s.seed)
    info = load_info(data.path)
    if info is None or (info.num_train, info.num_eval, info.seed) != wanted:
        print(f"generating synthetic {s.kind} data in {data.path} ...", flush=True)
        generate = {
            "ctr": generate_ctr,
            "retrieval": generate_retrieval,
            "relevance": generate_relevance,
        }[s.kind]
        info = generate(data.path, s.num_train, s.num_eval, s.files, s.seed)
    return info


def prepare_data(cfg: RunConfig) -> tuple[str | list[str], str | list[str] | None, Info | None]:
    """Train and eval paths; generates the synthetic data first when configured and absent."""
    data = cfg.data
    info = _synthetic(cfg) if data.synthetic is not None else None
    train = data.train or (str(Path(data.path) / "train") if data.synthetic else None)
    evals = data.eval or (str(Path(data.path) / "eval") if data.synthetic else None)
    if train is None:
        raise ConfigError("data.train: field required (or set data.synthetic)")
    return train, evals, info


def build(cfg: RunConfig, for_training: bool = True) -> tuple[Trainer, Info | None]:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    train_path, eval_path, info = prepare_data(cfg)
    schema = cfg.data.schema_
    device = torch.device(cfg.device)
    train_data = reader_from_config(cfg.data, train_path, train=True, seed=cfg.seed)
    eval_data = None
    if eval_path is not None:
        eval_data = reader_from_config(cfg.data, eval_path, train=False, seed=cfg.seed)
    model = build_model(cfg.model, schema, device)
    trainer = Trainer(model, train_data, eval_data, cfg.train, run_dir=cfg.run_dir, device=device)
    return trainer, info


def report(result: dict[str, Any], info: Info | None) -> dict[str, Any]:
    """The eval result, with the synthetic data's oracle AUC beside it."""
    out: dict[str, Any] = dict(result)
    if isinstance(info, SyntheticInfo):
        out["oracle_auc"] = info.oracle_auc
    elif isinstance(info, MultiTaskInfo):
        for task, value in asdict(info)["oracle_auc"].items():
            out[f"{task}/oracle_auc"] = value
    return out


def train(cfg: RunConfig, resume: str | Path | None = None) -> dict[str, Any]:
    """Train from ``cfg``; with ``resume`` (a run directory), continue from its newest
    checkpoint, writing into that directory."""
    if resume is not None:
        cfg.run_dir = str(resume)
        checkpoint = latest_checkpoint(resume)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    trainer, info = build(cfg)
    if resume is not None:
        print(f"resuming from {checkpoint}", flush=True)
        trainer.resume(checkpoint)
    result = report(trainer.fit(), info)
    (run_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def evaluate(cfg: RunConfig, checkpoint: str | Path) -> dict[str, Any]:
    """Metrics of ``checkpoint`` on the config's eval data, in this one process.

    ``checkpoint`` is a single-process checkpoint folder or a distributed (DCP) one, saved
    at any world size: its shards load into the unsharded model.
    """
    trainer, info = build(cfg)
    if (Path(checkpoint) / ".metadata").is_file():  # torch.distributed.checkpoint layout
        from recis.distributed import checkpoint as dcp_checkpoint
        from recis.distributed.hashed import hashed_collections
        from recis.errors import CheckpointError

        try:
            trainer.step = int(dcp_checkpoint.load(checkpoint, trainer.model).get("step", 0))
        except CheckpointError as err:
            if not any(True for _ in hashed_collections(trainer.model)):
                raise
            raise CheckpointError(  # the hashed engine's sharded state loads only sharded
                f"{err}; a distributed checkpoint of hashed tables loads into the sharded "
                "model: run `torchrun --nproc-per-node 1 -m recis.cli eval ...`"
            ) from None
    else:
        state, _ = load_checkpoint(checkpoint, map_location=cfg.device)
        trainer.load_state_dict(state)
    return report(trainer.evaluate(), info)
