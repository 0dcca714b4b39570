"""A Retrieval-GRPO run: data, the InfoNCE stage, the GRPO stage, evaluation of both.

Run directory: ``infonce/model`` (the starting model, a checkpoint folder),
``grpo/checkpoint-<step>`` (resumable), ``grpo/model`` (final), ``log.jsonl`` (one line per
logged step: losses and each reward component's mean), ``results.json``.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from recis.errors import CheckpointError, ConfigError, OutputError
from recis.retrieval_rl.config import EncoderConfig, RetrievalGRPORunConfig
from recis.retrieval_rl.data import RetrievalData, load_pairs
from recis.retrieval_rl.encoder import TextDualEncoder, TokenizedTexts
from recis.retrieval_rl.evaluate import evaluate
from recis.retrieval_rl.rewards import (
    BM25Channel,
    ClickReward,
    ExclusivityReward,
    LexicalRelevanceScorer,
    PublishedRelevanceScorer,
    QualityReward,
    RelevanceReward,
    RelevanceScorer,
    Reward,
    WeightedReward,
)
from recis.retrieval_rl.trainer import PairSampler, RetrievalGRPOTrainer, load, save, train_infonce


class EncoderRun(Protocol):
    """What building the dual encoder reads of a run config (Retrieval-GRPO's or LREM's)."""

    encoder: EncoderConfig
    device: str


def build_encoder(cfg: EncoderRun, data: RetrievalData) -> TextDualEncoder:
    """The InfoNCE dual encoder over the run's query and item texts, untrained."""
    e = cfg.encoder
    return TextDualEncoder(
        TokenizedTexts.build(data.queries, e.buckets),
        TokenizedTexts.build(data.items, e.buckets),
        e.buckets,
        e.width,
        e.dim,
        cfg.device,
    )


def relevance_scorer(cfg: RetrievalGRPORunConfig, data: RetrievalData) -> RelevanceScorer:
    """The relevance reward's model and relevance@K's judge: ``grpo.rewards.relevance_model``
    (a published DeepBoW or relevance-LLM version), else lexical features' logistic
    regression fitted on the training labels."""
    path = cfg.grpo.rewards.relevance_model
    if path is not None:
        return PublishedRelevanceScorer(path)
    return LexicalRelevanceScorer.fit(*data.labelled, positive=cfg.data.positive)


def build_reward(
    cfg: RetrievalGRPORunConfig, data: RetrievalData, scorer: RelevanceScorer
) -> WeightedReward:
    """The weighted components with a non-zero weight."""
    w = cfg.grpo.rewards
    parts: list[tuple[Reward, float]] = []
    if w.relevance:
        parts.append((RelevanceReward(scorer, data.queries, data.items), w.relevance))
    if w.click:
        parts.append((ClickReward(data.positives), w.click))
    if w.quality:
        if data.quality is None:
            from recis.errors import ConfigError

            raise ConfigError("grpo.rewards.quality: needs data.quality (an item column)")
        parts.append((QualityReward(data.quality), w.quality))
    if w.exclusivity:
        # only queries with training positives ever form a GRPO group
        rows = np.unique(data.train_queries)
        found = BM25Channel(data.items).results([data.queries[q] for q in rows], w.bm25_depth)
        bm25 = [np.empty(0, np.int64)] * len(data.queries)
        for q, items in zip(rows.tolist(), found):
            bm25[q] = items
        parts.append((ExclusivityReward([bm25]), w.exclusivity))
    return WeightedReward(parts)


class JsonlLog:
    """Appends one JSON line per call (``log.jsonl`` of a run)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, row: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def latest_checkpoint(folder: Path) -> Path | None:
    found = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return found[-1] if found else None


def start_run(run: Path, resume: bool, overwrite: bool) -> None:
    if run.exists() and any(run.iterdir()) and not (resume or overwrite):
        raise OutputError(f"{run}: run directory is not empty (--resume or --overwrite)")
    if overwrite and run.exists() and not resume:
        shutil.rmtree(run)
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{run}: cannot create the run directory: {err.strerror}") from None


def train(
    cfg: RetrievalGRPORunConfig, resume: bool = False, overwrite: bool = False
) -> dict[str, dict[str, float]]:
    """Both stages (a saved stage is not retrained on ``resume``), then evaluation."""
    run = Path(cfg.run_dir)
    start_run(run, resume, overwrite)
    torch.manual_seed(cfg.seed)
    data = load_pairs(cfg.data)
    log = JsonlLog(run / "log.jsonl")
    scorer = relevance_scorer(cfg, data)
    model = build_encoder(cfg, data)
    start = (
        Path(cfg.init_from) / "infonce" / "model" if cfg.init_from else run / "infonce" / "model"
    )
    if start.exists():
        load(start, model, None)
    elif cfg.init_from:
        raise CheckpointError(f"init_from: {start} does not exist")
    else:
        opt = train_infonce(model, data, cfg.infonce, cfg.seed, log)
        save(start, model, opt, {"stage": "infonce", "step": cfg.infonce.steps})
    results = {"infonce": evaluate(model, data, cfg.eval, scorer)}
    reference = build_encoder(cfg, data)
    reference.load_state_dict(model.state_dict())
    trainer = RetrievalGRPOTrainer(
        model, reference, build_reward(cfg, data, scorer), cfg.grpo, cfg.infonce.temperature
    )
    sampler = PairSampler(data, cfg.grpo.batch_size, cfg.seed + 1)
    folder = run / "grpo"
    if (folder / "model").exists() and resume:
        load(folder / "model", model, None)
    else:
        latest = latest_checkpoint(folder) if resume else None
        if latest is not None:
            trainer.restore(latest, sampler)
        while trainer.step_count < cfg.grpo.steps:
            log(trainer.step(*sampler.next()))
            if trainer.step_count % cfg.grpo.checkpoint_every == 0:
                trainer.save(folder / f"checkpoint-{trainer.step_count}", sampler)
        trainer.save(folder / "model", sampler)
    results["grpo"] = evaluate(model, data, cfg.eval, scorer)
    (run / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


STAGES = ("infonce", "grpo")


def evaluate_stage(cfg: RetrievalGRPORunConfig, stage: str) -> dict[str, float]:
    """Evaluate the saved model of a trained stage of ``cfg.run_dir`` (``infonce``, ``grpo``)."""
    if stage not in STAGES:
        raise ConfigError(f"--checkpoint: expected one of {', '.join(STAGES)}, got {stage!r}")
    saved = Path(cfg.run_dir) / stage / "model"
    if not saved.exists():
        raise CheckpointError(f"{saved}: stage {stage} is not trained")
    data = load_pairs(cfg.data)
    scorer = relevance_scorer(cfg, data)
    model = build_encoder(cfg, data)
    load(saved, model, None)
    return evaluate(model, data, cfg.eval, scorer)


def main_train(
    cfg: RetrievalGRPORunConfig, resume: bool, overwrite: bool, stage: str | None = None
) -> int:
    """``recis train`` on a retrieval_grpo config (``recis eval`` with ``stage``: that stage's
    saved model evaluated again): one line of metrics per stage."""
    if stage is not None:
        results = {stage: evaluate_stage(cfg, stage)}
    else:
        results = train(cfg, resume, overwrite)
    for stage, metrics in results.items():
        print(f"{stage}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    print(f"run directory: {cfg.run_dir}")
    sys.stdout.flush()
    return 0
