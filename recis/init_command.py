"""``recis init``: the command line of :mod:`recis.recipe` (argparse only, so building the
CLI imports neither pyarrow nor torch).

    recis init TRAIN --label COL [--eval FILE] [--out CONFIG.yaml] [--model dlrm|deepfm|deepbow]
        [--format F] [--csv YAML] [--rows N] [--ignore COL ...]
        [--positive-at X | --positive V ...] [--run-dir D]
"""

from __future__ import annotations

import argparse

HELP = "write a run config for your training files (schema read off a sample, recipe defaults)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("train", help="training file(s): a file, folder or glob")
    p.add_argument("--label", action="append", required=True, help="label column (repeatable)")
    p.add_argument("--eval", help="validation file(s): evaluation every epoch, early stopping")
    p.add_argument("--out", default="recis.yaml", help="config to write (not overwritten)")
    p.add_argument("--model", choices=["dlrm", "deepfm", "deepbow"], default="dlrm")
    p.add_argument(
        "--format", choices=["parquet", "orc", "csv", "tsv", "jsonl", "libsvm"], default=None
    )
    p.add_argument("--csv", help="CSV/TSV parsing as a YAML mapping (data.csv's fields)")
    p.add_argument("--rows", type=int, default=200_000, help="rows sampled (the first ones)")
    p.add_argument("--ignore", nargs="*", default=[], help="columns not to read")
    p.add_argument(
        "--positive-at", type=float, default=None, help="a label >= this is 1 (ratings: 4)"
    )
    p.add_argument(
        "--positive", nargs="+", default=None, help="a string label is 1 for these (buy, yes)"
    )
    p.add_argument("--run-dir", default=None, help="the config's run_dir (runs/<out's stem>)")


def main(args: argparse.Namespace) -> None:
    from recis.config_yaml import load_text
    from recis.recipe import init_config, shown

    done = init_config(
        args.train,
        args.label,
        args.out,
        eval_path=args.eval,
        fmt=args.format,
        csv=None if args.csv is None else load_text(args.csv, "--csv"),
        model=args.model,
        rows=args.rows,
        ignore=args.ignore,
        positive_at=args.positive_at,
        run_dir=args.run_dir,
        positive=args.positive,
    )
    print(
        f"{done['path']}: {len(done['dense'])} dense, {len(done['sparse'])} id"
        + (f", {len(done['text'])} text" if done["text"] else "")
        + " features, "
        f"{len(done['skipped'])} columns not read "
        f"({', '.join(map(shown, done['skipped'])) or 'none'}); "
        f"train with: recis train {done['path']}"
    )
