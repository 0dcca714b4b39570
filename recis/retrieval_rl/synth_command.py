"""``recis synthesize``: query-rewrite data synthesis (:mod:`recis.retrieval_rl.synth`).

    recis synthesize CONFIG [--set a.b=v ...] [--resume | --overwrite]
    recis synthesize --model DIR --queries FILE --items FILE --pairs FILE --out FILE.parquet
        [--count-column COL --tail-max-count C] [--num-rewrites M] [--depth m] [--min-relevance S]
        [--max-pairs-per-query P] [--run-dir DIR] [--overwrite]

The first form is a ``kind: query_rewrite`` config (rewriter SFT + GRPO, then synthesis); the
second runs a trained rewriter (both stages skipped). ``--pairs``: labelled (query, title,
label[, split]) rows that fit the relevance model and name the known positives.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="a kind: query_rewrite config (or use --model ...)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="A.B=V")
    p.add_argument("--model", help="a trained rewriter (HF model directory)")
    p.add_argument("--queries", help="parquet with a 'query' column: the query set")
    p.add_argument("--items", help="parquet with a 'title' column: the retriever's pool")
    p.add_argument("--pairs", help="labelled parquet (query, title, label[, split])")
    p.add_argument("--out", help="the pairs to write (parquet)")
    p.add_argument("--run-dir", default=None, help="run directory (default: OUT's name + .run)")
    p.add_argument("--count-column", help="the queries' frequency column (default: rows per query)")
    p.add_argument(
        "--tail-max-count",
        type=int,
        default=-1,
        help="keep queries this frequent at most (-1: all)",
    )
    p.add_argument("--num-rewrites", type=int, default=4)
    p.add_argument("--depth", type=int, default=20, help="results per rewrite")
    p.add_argument("--min-relevance", type=float, default=0.8)
    p.add_argument("--max-pairs-per-query", type=int, default=5)
    p.add_argument("--resume", action="store_true", help="reuse the saved rewriter stages")
    p.add_argument("--overwrite", action="store_true", help="replace OUT and the run directory")


def _flag_config(args: argparse.Namespace) -> dict[str, Any]:
    from recis.errors import ConfigError

    missing = [
        f"--{n}" for n in ("model", "queries", "items", "pairs", "out") if not getattr(args, n)
    ]
    if missing:
        raise ConfigError(f"synthesize: give a CONFIG or {', '.join(missing)}")
    return {
        "kind": "query_rewrite",
        "run_dir": args.run_dir or f"{args.out}.run",
        "pairs": {"path": args.pairs},
        "queries": {
            "path": args.queries,
            "count": args.count_column,
            "tail_max_count": args.tail_max_count,
        },
        "items": {"path": args.items},
        "model": {"path": args.model},
        "sft": {"max_steps": 0},
        "grpo": {"max_steps": 0},
        "retriever": {"depth": args.depth},
        "synth": {
            "out": args.out,
            "num_rewrites": args.num_rewrites,
            "min_relevance": args.min_relevance,
            "max_pairs_per_query": args.max_pairs_per_query,
        },
    }


def main(args: argparse.Namespace) -> int:
    from recis.config import apply_overrides
    from recis.retrieval_rl.synth_config import build_config, load_synth_config
    from recis.retrieval_rl.synth_run import main as run

    if args.config is not None:
        cfg = load_synth_config(args.config, args.overrides)
    else:
        cfg = build_config(apply_overrides(_flag_config(args), args.overrides))
    return run(cfg, args.resume, args.overwrite)
