"""LIBSVM / SVMlight reading: recis' reader against scikit-learn's ``load_svmlight_file``, in
one run on the same file of MSLR's shape (a grade 0-4, ``qid``, 136 features a line).

    .venv/bin/python benchmarks/libsvm_io.py [--rows 50000] [--repeats 5] [--threads 1]

Sides, alternating after a warm-up round, rows/s of each (median over ``--repeats``):

* ``sklearn``: ``sklearn.datasets.load_svmlight_file(path, query_id=True)`` (Cython; a CSR
  matrix, labels and query ids: the classical way to load such a file in Python);
* ``recis_epoch``: one epoch of ``recis.io.Reader(format="libsvm")`` with the 136 features as
  dense columns, the label and ``qid``, batches of 4096 (validation, dense matrix, labels,
  extras: what training reads), the file's count pass cached, as for every epoch after the
  first;
* ``recis_scan``: the count pass a reader makes once per file when it is built (parse,
  check every line, largest index).

The last line is one JSON object: ``epoch_vs_sklearn`` (recis epoch rows/s over sklearn's)
and each side's rows/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import torch
from sklearn.datasets import load_svmlight_file

from recis.features import DenseFeature, LabelSpec, Schema
from recis.io import Reader, libsvm
from recis.io import sources as io_sources

FEATURES = 136


def write_file(path: Path, rows: int, seed: int = 0) -> None:
    """MSLR's shape: every feature on every line, 100 documents a query."""
    rng = np.random.default_rng(seed)
    x = rng.random((rows, FEATURES)) * 100
    with open(path, "w") as f:
        for i in range(rows):
            pairs = " ".join(f"{k + 1}:{v:.6g}" for k, v in enumerate(x[i]))
            f.write(f"{rng.integers(0, 5)} qid:{i // 100} {pairs}\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    schema = Schema(
        dense=[DenseFeature(name=f"f{k}") for k in range(1, FEATURES + 1)],
        labels=[LabelSpec(name="label", kind="real", positive_at=2.0)],
        extras=["qid"],
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.txt"
        write_file(path, args.rows)
        size = path.stat().st_size

        def sklearn_side() -> int:
            return len(load_svmlight_file(str(path), n_features=FEATURES, query_id=True)[1])

        def epoch_side() -> int:
            return sum(b.batch_size for b in Reader(path, schema, 4096, format="libsvm"))

        def scan_side() -> int:
            io_sources._LIBSVM_SCANS.clear()
            return libsvm.scan(pafs.LocalFileSystem(), str(path)).rows

        sides = {"sklearn": sklearn_side, "recis_epoch": epoch_side, "recis_scan": scan_side}
        times: dict[str, list[float]] = {k: [] for k in sides}
        for rep in range(args.repeats + 1):
            for name, fn in sides.items():
                t0 = time.perf_counter()
                rows = fn()
                if rep:
                    times[name].append(time.perf_counter() - t0)
                assert rows == args.rows, (name, rows)
    rate = {k: args.rows / statistics.median(v) for k, v in times.items()}
    print(f"{args.rows} lines of {FEATURES} features, {size / 1e6:.1f} MB, {args.threads} threads")
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for k, v in rate.items():
        print(f"{k:12s} {v:12,.0f} rows/s  {v * size / args.rows / 1e6:6.1f} MB/s (median)")
    print(
        json.dumps(
            {
                "rows": args.rows,
                "threads": args.threads,
                "epoch_vs_sklearn": round(rate["recis_epoch"] / rate["sklearn"], 3),
                "scan_vs_sklearn": round(rate["recis_scan"] / rate["sklearn"], 3),
                **{f"{k}_rows_per_s": round(v) for k, v in rate.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
