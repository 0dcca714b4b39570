"""``recis train`` / ``recis eval`` for relevance-LLM configs (``kind: relevance_llm``).

``recis train CONFIG`` runs every stage (``--resume RUN_DIR``: stages whose model is saved are
skipped, an interrupted one continues from its newest trl checkpoint); ``recis eval CONFIG
--checkpoint MODEL`` scores ``data.eval`` with a saved model (a model directory, or the name
of a stage of the run) in one forward pass per batch and writes the scores next to the run.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from recis.errors import CheckpointError, ConfigError, OutputError
from recis.llm.config import RelevanceLLMConfig, load_llm_config
from recis.llm.retrieval import ChunkRetriever, RetrieverLoader, attach_context, context_retriever


def _print(results: dict[str, dict[str, Any]]) -> None:
    for stage, metrics in results.items():
        parts = [
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
            for k, v in metrics.items()
            if v is not None
        ]
        print(f"{stage}: " + ", ".join(parts))


def model_dir(cfg: RelevanceLLMConfig, checkpoint: str) -> Path:
    """A model directory, or the saved model of the stage named ``checkpoint``."""
    p = Path(checkpoint)
    if (p / "config.json").is_file():
        return p
    staged = Path(cfg.run_dir) / "stages" / checkpoint / "model"
    if (staged / "config.json").is_file():
        return staged
    raise CheckpointError(
        f"{checkpoint}: neither a model directory nor a trained stage of {cfg.run_dir}"
    )


def score_file(
    cfg: RelevanceLLMConfig, checkpoint: str, retriever: ChunkRetriever | None = None
) -> tuple[dict[str, Any], Path]:
    """Score ``data.eval`` with the model; writes ``run_dir/scores-<name>.parquet`` (query,
    title, label, score, p_<level>...) and returns the metrics and that path. Chunks, where
    the config has a retriever and no context column: from ``retriever``, else its BM25."""
    import numpy as np

    from recis.llm.model import load_model, load_tokenizer
    from recis.llm.scoring import cumulative_score, level_probs, relevance_metrics
    from recis.llm.task import RelevanceTask, load_examples

    if cfg.data.eval is None:
        raise ConfigError("data.eval: recis eval needs a file of pairs to score")
    path = model_dir(cfg, checkpoint)
    task = RelevanceTask(cfg.prompt, cfg.levels)
    examples = load_examples(cfg.data.eval, cfg.data, cfg.levels, cfg.data.max_eval)
    retriever = context_retriever(cfg, retriever)
    if retriever is not None:
        examples = attach_context(retriever, examples)
    model, tok = load_model(path, cfg.device), load_tokenizer(path)
    probs = level_probs(model, tok, task, examples, cfg.eval_batch_size)
    cols: dict[str, Any] = {
        "query": [e.query for e in examples],
        "title": [e.title for e in examples],
        "label": [e.label for e in examples],
        "score": cumulative_score(probs, cfg.prompt.quantile).numpy(),
    }
    for k, name in enumerate(cfg.levels.names):
        cols[f"p_{name}"] = np.ascontiguousarray(probs[:, k].numpy())
    out = (
        Path(cfg.run_dir)
        / f"scores-{path.parent.name if path.name == 'model' else path.name}.parquet"
    )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(cols), out)
    except OSError as err:
        raise OutputError(f"{out}: cannot write scores: {err.strerror}") from None
    return relevance_metrics(probs, examples, task), out


def main(args: argparse.Namespace, loaders: Mapping[str, RetrieverLoader] | None = None) -> int:
    """Run ``recis train`` / ``recis eval`` for a relevance-LLM config; ``loaders`` build the
    retriever kinds this layer does not hold (``dense``: recis.cli passes it)."""
    cfg = load_llm_config(args.config, args.overrides)
    retriever = context_retriever(cfg, loaders=loaders)
    if args.command == "train":
        from recis.llm.pipeline import train

        if args.resume is not None:
            cfg.run_dir = args.resume

        _print(train(cfg, args.resume is not None, args.overwrite, retriever))
        print(f"run directory: {cfg.run_dir}")
        return 0
    metrics, out = score_file(cfg, args.checkpoint, retriever)
    _print({"evaluation": metrics})
    print(f"scores: {out}")
    return 0
