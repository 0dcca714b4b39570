"""Score a MovieLens CTR recipe variant on three validation folds, next to the recipe as shipped.

The recipe's valid slice (the last 10% of the train part: 8,067 rows, 66 users) is too small
to rank variants 0.002 AUC apart from one fold and one seed, and the test part must not be
used to choose. So a variant is scored on three folds, each over several seeds, beside the
shipped recipe in the same run (runs alternate shipped / variant):

* fold 1: the recipe's own split, ``train.parquet`` / ``valid.parquet`` of ``prepare.py``;
* fold 2: the earlier rows of ``train.parquet`` for training and its last ``len(valid)`` rows
  (by time, as the file is written) for validation: the same size of slice one period
  earlier, never seeing fold 1's valid rows;
* fold 3 (the gap fold): the first ``GAP_KEEP`` (70%) of ``train.parquet`` for training and
  ``valid.parquet`` for validation, 21,781 rows after the last training row (August 2007 to
  November 2014 on ``prepare.py``'s split). The test part lies on average about that many
  rows (18,151) beyond the end of training; the valid slices of folds 1-2 lie right after
  theirs. Of the three it is the one that ranked the recipes as the test part does (session
  15: DLRM above DeepFM and the HHFT of sessions 6-14, which fold 1 put first).

Nothing reads ``test.parquet``: the folds' folders hold train and valid files only.

Usage::

    python benchmarks/ctr_folds.py --model hhft --set model.kv_rank=16 --seeds 5 [--folds 1 3]
        [--work DIR]

Each run prints a line; the last line is one JSON object: ``model``, ``overrides``,
``seeds``, and per fold ``fold<k>_shipped`` / ``fold<k>_variant`` (best-epoch valid AUC per
seed), ``fold<k>_mean_diff`` (variant minus shipped, mean over seeds), ``fold<k>_ahead``
(seeds where the variant is higher), ``shipped_seconds`` / ``variant_seconds`` (mean per
run), or ``{"skipped": reason}`` without the shared data.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_data_ctr import DATA, MODELS, prepare_log, train_recipe  # noqa: E402

GAP_KEEP = 0.7  # fold 3 trains on this share of train.parquet's rows (the earliest)


def earlier_fold(train: pa.Table, valid_rows: int) -> tuple[pa.Table, pa.Table]:
    """``train`` split into (its rows before the last ``valid_rows``, those last rows): a
    validation slice one period earlier. ``train`` must be in time order (``timestamp``
    non-decreasing, as ``prepare.py`` writes it)."""
    if np.any(np.diff(train.column("timestamp").to_numpy()) < 0):
        raise ValueError("train.parquet: rows are not in timestamp order")
    if not 0 < valid_rows < len(train):
        raise ValueError(f"valid_rows {valid_rows}: needs 0 < valid_rows < {len(train)} rows")
    cut = len(train) - valid_rows
    return train.slice(0, cut), train.slice(cut)


def gap_fold(train: pa.Table, valid: pa.Table, keep: float = GAP_KEEP) -> tuple[pa.Table, pa.Table]:
    """(the first ``keep`` of ``train``'s rows, ``valid``): the same validation slice with the
    rest of ``train`` left out between them, as a later test period is from its training."""
    cut = int(keep * len(train))
    if not 0 < cut < len(train):
        raise ValueError(f"keep {keep}: leaves {cut} of {len(train)} train rows")
    return train.slice(0, cut), valid


def write_folds(prepared: Path, out: Path) -> list[Path]:
    """Folder per fold (``train.parquet`` and ``valid.parquet`` only) under ``out``."""
    train = pq.read_table(prepared / "train.parquet")
    valid = pq.read_table(prepared / "valid.parquet")
    splits = [(train, valid), earlier_fold(train, len(valid)), gap_fold(train, valid)]
    folds = []
    for k, (tr, va) in enumerate(splits, start=1):
        folder = out / f"fold{k}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(tr, folder / "train.parquet")
        pq.write_table(va, folder / "valid.parquet")
        folds.append(folder)
    return folds


def compare(
    model: str,
    overrides: list[str],
    seeds: int,
    data_dir: Path,
    work: Path,
    only: list[int] | None = None,
) -> dict[str, Any]:
    """Shipped recipe and variant, every fold (or the folds numbered in ``only``) and seed,
    alternating; see the module doc."""
    src = Path(data_dir) / "ml_latest_small"
    if not (src / "ratings.parquet").is_file():
        return {"skipped": f"no {src}/ratings.parquet"}
    folds = write_folds(prepare_log(src, work / "movielens_ctr"), work / "folds")
    out: dict[str, Any] = {"model": model, "overrides": overrides, "seeds": seeds}
    seconds: dict[str, list[float]] = {"shipped": [], "variant": []}
    for k, folder in enumerate(folds, start=1):
        if only and k not in only:
            continue
        auc: dict[str, list[float]] = {"shipped": [], "variant": []}
        for seed in range(seeds):
            for side, extra in (("shipped", []), ("variant", overrides)):
                run_dir = work / "runs" / f"fold{k}_{side}_s{seed}"
                res = train_recipe(model, folder, run_dir, [f"seed={seed}", *extra])
                auc[side].append(round(res["valid_auc"], 4))
                seconds[side].append(res["seconds"])
                print(
                    f"fold {k} seed {seed} {side:8s} valid {res['valid_auc']:.4f} "
                    f"epoch {res['best_epoch']} {res['seconds']} s",
                    flush=True,
                )
        diff = np.subtract(auc["variant"], auc["shipped"])
        out[f"fold{k}_shipped"], out[f"fold{k}_variant"] = auc["shipped"], auc["variant"]
        out[f"fold{k}_mean_diff"] = round(float(diff.mean()), 4)
        out[f"fold{k}_ahead"] = int((diff > 0).sum())
    for side, values in seconds.items():
        out[f"{side}_seconds"] = round(float(np.mean(values)), 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, required=True)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="config override of the variant, a.b=value (repeatable)",
    )
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per fold")
    parser.add_argument(
        "--folds", type=int, nargs="+", choices=(1, 2, 3), default=None, help="default: all"
    )
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: temp)")
    parser.add_argument("--data", type=Path, default=DATA, help="the shared/data folder")
    args = parser.parse_args()
    if args.work is not None:
        result = compare(args.model, args.overrides, args.seeds, args.data, args.work, args.folds)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = compare(
                args.model, args.overrides, args.seeds, args.data, Path(tmp), args.folds
            )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
