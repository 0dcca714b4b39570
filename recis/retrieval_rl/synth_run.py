"""A whole synthesis run (``recis synthesize``): rewriter stages, rewriting, curation, output.

See :mod:`recis.retrieval_rl.synth` for the method and the curation rules.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recis.errors import CheckpointError, OutputError
from recis.retrieval_rl.rewards import LexicalRelevanceScorer
from recis.retrieval_rl.synth import (
    Candidates,
    Labelled,
    curate,
    read_labelled,
    read_pool,
    select_queries,
    sft_pairs,
    write_pairs,
)
from recis.retrieval_rl.synth_config import QueryRewriteConfig
from recis.retrieval_rl.synth_dense import load_dense
from recis.retrieval_rl.synth_model import build_rewriter, model_version, rewrite, run_grpo, run_sft
from recis.retrieval_rl.synth_rewards import (
    BM25Retriever,
    DiversityReward,
    NewItemRelevanceReward,
    RetrievalGainReward,
    RetrievalJudge,
    Retriever,
)


def _start(run: Path, out: Path, resume: bool, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise OutputError(f"{out}: synth.out exists (--overwrite replaces it)")
    if run.exists() and any(run.iterdir()) and not (resume or overwrite):
        raise OutputError(f"{run}: run directory is not empty (--resume or --overwrite)")
    if overwrite and not resume and run.exists():
        shutil.rmtree(run)
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{run}: cannot create the run directory: {err.strerror}") from None


def _retriever(cfg: QueryRewriteConfig, labelled: Labelled) -> tuple[Retriever, list[str]]:
    """The offline retriever and its pool's texts."""
    r = cfg.retriever
    if r.kind == "dense":
        assert r.run_config is not None  # checked by build_config
        return load_dense(r.run_config, r.stage)
    pool = read_pool(cfg, labelled)
    return BM25Retriever(pool), pool


def _progress(line: str) -> None:
    print(f"synthesize: {line}", file=sys.stderr, flush=True)


def train_rewriter(
    cfg: QueryRewriteConfig,
    labelled: Labelled,
    judge: RetrievalJudge,
    texts: list[str],
    resume: bool,
) -> tuple[Path, dict[str, Any]]:
    """The rewriter's model directory after the configured stages (a stage whose model is saved
    is not retrained on ``resume``), and each stage's trl log history."""
    root, logs = Path(cfg.run_dir) / "rewriter", {}
    pairs = sft_pairs(cfg, labelled)
    if cfg.model.path is not None:
        model = Path(cfg.model.path)
        if not (model / "config.json").is_file():
            raise CheckpointError(f"model.path: {model} is not an HF model directory")
    else:
        model = root / "scratch" / "model"
        if not (resume and model.exists()):
            # the tokenizer also sees the queries it will rewrite (any byte is covered anyway)
            extra = [(q, "") for q in texts]
            build_rewriter(cfg.model.scratch, [*pairs, *extra], model)
    if cfg.sft.max_steps:
        out = root / "sft"
        if not (resume and (out / "model").exists()):
            logs["sft"] = run_sft(model, pairs, cfg.sft, out, cfg.device)
        model = out / "model"
    g = cfg.grpo
    if g.max_steps:
        out = root / "grpo"
        if not (resume and (out / "model").exists()):
            rng = np.random.default_rng(g.seed)
            train_q = sorted({q for q, _ in labelled.positives})
            pick = rng.choice(len(train_q), min(g.queries, len(train_q)), replace=False)
            w = g.weights
            logs["grpo"] = run_grpo(
                model,
                [train_q[i] for i in sorted(pick)],
                [RetrievalGainReward(judge), NewItemRelevanceReward(judge), DiversityReward()],
                [w.gain, w.relevance, w.diversity],
                g,
                cfg.sft.max_rewrite_chars,
                out,
                cfg.device,
            )
        model = out / "model"
    return model, logs


def synthesize(
    cfg: QueryRewriteConfig, resume: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Train (or load) the rewriter, rewrite the long-tail queries, curate, write ``synth.out``.
    Returns the run's counts (also in ``run_dir/log.json``)."""
    t0 = time.perf_counter()
    run, out, s = Path(cfg.run_dir), Path(cfg.synth.out), cfg.synth
    _start(run, out, resume, overwrite)
    labelled = read_labelled(cfg)
    queries = select_queries(cfg)
    scorer = LexicalRelevanceScorer.fit(
        labelled.queries, labelled.items, labelled.labels, positive=cfg.pairs.positive
    )
    retriever, pool = _retriever(cfg, labelled)
    judge = RetrievalJudge(retriever, scorer, pool, cfg.retriever.depth, s.min_relevance)
    summary: dict[str, Any] = {"queries": len(queries), "pool": len(pool)}
    rewriter, version = "", ""
    if s.use_rewrites:
        model, summary["stages"] = train_rewriter(cfg, labelled, judge, queries, resume)
        summary["train_seconds"] = time.perf_counter() - t0
        _progress(f"rewriter ready ({summary['train_seconds']:.0f}s); rewriting {len(queries)}")
        torch.manual_seed(s.seed)
        raw = rewrite(
            model, queries, s.num_rewrites, s.max_new_tokens, s.temperature, s.batch_size,
            cfg.device,
        )  # fmt: skip
        rewriter, version = str(model), model_version(model)
    else:
        raw = [[] for _ in queries]
    summary["rewrite_seconds"] = time.perf_counter() - t0 - summary.get("train_seconds", 0.0)
    _progress(f"rewrites done ({summary['rewrite_seconds']:.0f}s); retrieving and curating")
    cands = Candidates.build(queries, raw, cfg.sft.max_rewrite_chars)
    columns = curate(cands, retriever, scorer, pool, cfg, labelled.positives)
    provenance = {
        "retriever": f"{retriever.name}:depth={cfg.retriever.depth}",
        "rewriter": rewriter,
        "rewriter_version": version,
        "relevance_model": f"lexical_logistic:{cfg.pairs.path}",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    summary["pairs"] = write_pairs(columns, provenance, out)
    summary["rewrites"] = sum(len(g) for g in cands.rewrites)
    summary["queries_with_pairs"] = len(set(columns["query"]))
    summary["seconds"] = time.perf_counter() - t0
    (run / "log.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return summary


def main(cfg: QueryRewriteConfig, resume: bool, overwrite: bool) -> int:
    """``recis synthesize``: one line of counts, then where the pairs are."""
    got = synthesize(cfg, resume, overwrite)
    keys = ("queries", "rewrites", "pairs", "queries_with_pairs", "pool")
    print(", ".join(f"{k} {got[k]}" for k in keys))
    print(f"pairs: {cfg.synth.out}")
    sys.stdout.flush()
    return 0
