"""``recis split``: the command line of :mod:`recis.io.split` (argparse only, so building the
CLI imports neither pyarrow nor torch).

    recis split INPUT ... --out DIR --by random|order|time|leave-last-out|group
        [--format F] [--fractions TRAIN [VALID] TEST] [--seed N] [--time COL] [--tiebreak COL ...]
        [--user COL] [--item COL] [--valid] [--group COL] [--csv YAML]
"""

from __future__ import annotations

import argparse

HELP = "split a log into train/valid/test parquet files (deterministic)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "input",
        nargs="+",
        help="parquet / ORC / CSV / TSV / JSON Lines / LIBSVM file(s), folder or glob",
    )
    p.add_argument("--out", required=True, help="output folder (<part>.parquet)")
    methods = ["random", "order", "time", "leave-last-out", "group"]  # recis.io.split.METHODS
    p.add_argument("--by", required=True, choices=methods)
    p.add_argument(
        "--format", choices=["parquet", "orc", "csv", "tsv", "jsonl", "libsvm"], default=None
    )
    p.add_argument(
        "--fractions",
        nargs="+",
        type=float,
        default=[0.8, 0.2],
        help="train [valid] test (1: the whole input as train.parquet)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time", help="timestamp column (time, leave-last-out)")
    p.add_argument("--tiebreak", nargs="*", default=[], help="columns ordering equal times")
    p.add_argument("--user", help="user column (leave-last-out)")
    p.add_argument("--item", help="item column: orders a user's equal times (leave-last-out)")
    p.add_argument("--valid", action="store_true", help="leave-last-out: second-to-last->valid")
    p.add_argument("--group", help="group column, e.g. the query string (group)")
    p.add_argument(
        "--csv",
        help="CSV/TSV parsing as a YAML mapping, the fields of a run config's data.csv:"
        " '{layout: hive, column_names: [user, item, ts]}'",
    )


def main(args: argparse.Namespace) -> None:
    from recis.config_yaml import load_text
    from recis.io.csv_options import csv_options, sniffed_options
    from recis.io.paths import SUFFIXES, resolve_paths
    from recis.io.split import guess_format, split_files

    opts = {
        "fractions": args.fractions,
        "seed": args.seed,
        "time": args.time,
        "tiebreak": args.tiebreak,
        "user": args.user,
        "item": args.item,
        "valid": args.valid,
        "group": args.group,
    }
    fmt = args.format or guess_format(args.input)
    given = load_text(args.csv, "--csv") if args.csv is not None else None
    given, _ = sniffed_options(resolve_paths(args.input, SUFFIXES[fmt])[0], fmt, given)
    csv = csv_options(given)
    rows = split_files(args.input, args.out, args.by, format=fmt, csv=csv, **opts)
    for name, n in rows.items():
        print(f"{name}: {n} rows -> {args.out}/{name}.parquet")
