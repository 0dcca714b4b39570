"""An LREM run (``kind: lrem``): base dual encoder, LM, SFT + InfoNCE, RL, evaluation.

Run directory: ``infonce/model`` (the dual encoder; or ``init_from``'s), ``lm/base`` (the
scratch LM and tokenizer as an HF directory, when ``lm.model_path`` is None),
``lrem_sft/checkpoint-<step>`` and ``lrem_sft/model``, ``lrem_rl/checkpoint-<step>`` and
``lrem_rl/model`` (the tower's weights, resumable), ``log.jsonl``, ``results.json``
(``infonce``, ``lrem_sft``, ``lrem_rl``: :func:`recis.retrieval_rl.evaluate.evaluate`, the
LREM rows with the router's mix of towers, plus ``hard_share``: the router's share of hard
  eval queries).

``recis train CONFIG`` runs it (``--resume RUN_DIR``: a saved stage is not retrained, an
interrupted one continues from its newest checkpoint); ``recis eval CONFIG --checkpoint
STAGE`` (``infonce``, ``lrem_sft`` or ``lrem_rl``) evaluates a trained stage again.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from recis.errors import CheckpointError, ConfigError
from recis.retrieval_rl.data import RetrievalData, load_pairs
from recis.retrieval_rl.encoder import TextDualEncoder
from recis.retrieval_rl.evaluate import evaluate
from recis.retrieval_rl.lrem import LREMEncoder, ReasonEmbedTower
from recis.retrieval_rl.lrem_config import LREMRunConfig, load_lrem_config
from recis.retrieval_rl.lrem_router import hard_queries
from recis.retrieval_rl.lrem_train import LREMRLTrainer, LREMSFTTrainer
from recis.retrieval_rl.pipeline import JsonlLog, build_encoder, latest_checkpoint, start_run
from recis.retrieval_rl.rewards import LexicalRelevanceScorer
from recis.retrieval_rl.trainer import load, save, train_infonce

STAGES = ("infonce", "lrem_sft", "lrem_rl")


def base_encoder(cfg: LREMRunConfig, data: RetrievalData, train: bool) -> TextDualEncoder:
    """The InfoNCE dual encoder: ``init_from``'s or this run's ``infonce/model``, trained and
    saved first when absent and ``train``."""
    model = build_encoder(cfg, data)
    start = Path(cfg.init_from or cfg.run_dir) / "infonce" / "model"
    if start.exists():
        load(start, model, None)
    elif cfg.init_from or not train:
        raise CheckpointError(f"{'init_from' if cfg.init_from else 'infonce'}: {start} missing")
    else:
        opt = train_infonce(
            model, data, cfg.infonce, cfg.seed, JsonlLog(Path(cfg.run_dir) / "log.jsonl")
        )
        save(start, model, opt, {"stage": "infonce", "step": cfg.infonce.steps})
    return model


def build_tower(cfg: LREMRunConfig, data: RetrievalData) -> ReasonEmbedTower:
    """The LM query tower from ``lm.model_path`` or the run's scratch LM (built once)."""
    from recis.llm.model import build_scratch, load_model, load_tokenizer

    lm_cfg = cfg.lm
    path = Path(lm_cfg.model_path) if lm_cfg.model_path else Path(cfg.run_dir) / "lm" / "base"
    if lm_cfg.model_path is None and not (path / "config.json").is_file():
        sep = lm_cfg.separator
        texts = [q + sep for q in data.queries] + list(data.items)
        build_scratch(lm_cfg.scratch, texts, path)
    torch.manual_seed(cfg.seed)  # the projection's initialisation
    return ReasonEmbedTower(
        load_model(path, cfg.device, lm_cfg.dtype),
        load_tokenizer(path),
        cfg.encoder.dim,
        lm_cfg.max_query_tokens,
        lm_cfg.max_reasoning_tokens,
        lm_cfg.separator,
    )


def _stage(
    folder: Path,
    trainer: LREMSFTTrainer | LREMRLTrainer,
    steps: int,
    every: int,
    resume: bool,
    log: Callable[[dict[str, Any]], None],
) -> None:
    """Train one stage to ``steps`` (or load its saved model on resume)."""
    if resume and (folder / "model").exists():
        load(folder / "model", trainer.model.tower, None)
        return
    latest = latest_checkpoint(folder) if resume else None
    if latest is not None:
        trainer.restore(latest)
    while trainer.step_count < steps:
        log({"stage": trainer.name, **trainer.step()})
        if trainer.step_count % every == 0:
            trainer.save(folder / f"checkpoint-{trainer.step_count}")
    trainer.save(folder / "model")


def _evaluate(model: Any, data: RetrievalData, cfg: LREMRunConfig, scorer: Any) -> dict[str, float]:
    out = evaluate(model, data, cfg.eval, scorer)
    if isinstance(model, LREMEncoder):
        out["hard_share"] = float(model.hard[data.eval_queries].mean())  # of all eval queries
    return out


def setup(cfg: LREMRunConfig, train: bool) -> tuple[RetrievalData, Any, LREMEncoder]:
    """The pairs, the relevance scorer (relevance@K judge), and the LREM model (base dual
    encoder + LM tower + the router's marks), untrained towers where nothing is saved."""
    data = load_pairs(cfg.data)
    scorer = LexicalRelevanceScorer.fit(*data.labelled, positive=cfg.data.positive)
    base = base_encoder(cfg, data, train)
    tower = build_tower(cfg, data)
    hard = hard_queries(cfg.router, data.queries, data.items, data.query_count, data.eval_queries)
    return data, scorer, LREMEncoder(tower, base, data.queries, hard)


def train(cfg: LREMRunConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Every stage (a saved one is not retrained on ``resume``), each evaluated."""
    run = Path(cfg.run_dir)
    start_run(run, resume, overwrite)
    torch.manual_seed(cfg.seed)
    data, scorer, model = setup(cfg, train=True)
    log = JsonlLog(run / "log.jsonl")
    results = {"infonce": _evaluate(model.base, data, cfg, scorer)}
    sft = LREMSFTTrainer(model, data, cfg.sft, cfg.seed + 2)
    _stage(run / "lrem_sft", sft, cfg.sft.steps, cfg.sft.checkpoint_every, resume, log)
    results["lrem_sft"] = _evaluate(model, data, cfg, scorer)
    rl = LREMRLTrainer(model, model.tower.frozen_copy(), data, cfg.rl, cfg.seed + 3)
    _stage(run / "lrem_rl", rl, cfg.rl.steps, cfg.rl.checkpoint_every, resume, log)
    results["lrem_rl"] = _evaluate(model, data, cfg, scorer)
    (run / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def evaluate_stage(cfg: LREMRunConfig, stage: str) -> dict[str, float]:
    """Evaluate a trained stage of ``cfg.run_dir`` (``infonce``, ``lrem_sft``, ``lrem_rl``)."""
    if stage not in STAGES:
        raise ConfigError(f"--checkpoint: expected one of {', '.join(STAGES)}, got {stage!r}")
    data, scorer, model = setup(cfg, train=False)
    if stage == "infonce":
        return _evaluate(model.base, data, cfg, scorer)
    saved = Path(cfg.run_dir) / stage / "model"
    if not saved.exists():
        raise CheckpointError(f"{saved}: stage {stage} is not trained")
    load(saved, model.tower, None)
    return _evaluate(model, data, cfg, scorer)


def main(args: argparse.Namespace) -> int:
    """``recis train`` / ``recis eval`` on a ``kind: lrem`` config: one line per stage."""
    cfg = load_lrem_config(args.config, args.overrides)
    if args.command == "eval":
        stage = args.checkpoint or "lrem_rl"
        results = {stage: evaluate_stage(cfg, stage)}
    else:
        if args.resume is not None:
            cfg.run_dir = args.resume
        results = train(cfg, resume=args.resume is not None, overwrite=args.overwrite)
    for stage, metrics in results.items():
        print(f"{stage}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    print(f"run directory: {cfg.run_dir}")
    sys.stdout.flush()
    return 0
