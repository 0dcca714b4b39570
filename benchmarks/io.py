"""Reader throughput vs raw pyarrow, and vs the DLRM training step, in one run on the same files.

    .venv/bin/python benchmarks/io.py [--rows 400000] [--batch-size 4096] [--steps 30]
        [--format parquet|jsonl]

1. ``vs_raw_pyarrow``: rows/s of ``recis.io.Reader`` (parquet -> Batch: validation,
   KJT building, dense transforms, labels; no shuffle) divided by rows/s of
   ``pyarrow.parquet.read_table(columns) + to_numpy()`` of every column, same files.
   Target >= 0.5. With ``--format jsonl`` the same rows are written as JSON Lines and
   the raw side is ``pyarrow.json.read_json`` (whole file, every field) + ``to_numpy()``.
2. ``vs_train_step``: rows/s of the reader as configured for training (shuffle
   on, prefetch thread) divided by rows/s of DLRM ``Trainer.train_step`` (the
   example config's model, CPU) on the same batch size. Target >= 5.

Each side is timed best-of-``--repeats``, the sides alternating, after a warm-up round
(page cache warm for all).
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import pyarrow.json as pajson
import pyarrow.parquet as pq
import torch

from recis.config import load_config
from recis.io import Reader, resolve_paths
from recis.models import build_model
from recis.synthetic import generate_ctr
from recis.train.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent


def raw_pyarrow(files: list[str], columns: list[str], fmt: str = "parquet") -> int:
    rows = 0
    for f in files:
        table = pq.read_table(f, columns=columns) if fmt == "parquet" else pajson.read_json(f)
        for name in columns:
            table.column(name).to_numpy()
        rows += table.num_rows
    return rows


def as_jsonl(path: str) -> str:
    """The parquet file ``path`` written beside it as JSON Lines (one object per row)."""
    out = path.rsplit(".", 1)[0] + ".jsonl"
    with open(out, "w", encoding="utf-8") as f:
        for batch in pq.ParquetFile(path).iter_batches(65536):
            f.writelines(json.dumps(row) + "\n" for row in batch.to_pylist())
    return out


def read_all(reader: Reader) -> int:
    return sum(b.batch_size for b in reader)


def best_rates(sides: dict, repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Best rows/s of each side, by wall clock and by this process's CPU time (all threads).

    The sides alternate (a, b, c, a, b, c, ...) after a warm-up round, so a change in
    machine load hits all of them alike; the CPU-time rate is what the side costs,
    whatever other processes on the machine are doing.
    """
    wall = dict.fromkeys(sides, 0.0)
    cpu = dict.fromkeys(sides, 0.0)
    for rep in range(repeats + 1):
        for name, fn in sides.items():
            t0, c0 = time.perf_counter(), time.process_time()
            rows = fn()
            if rep:
                wall[name] = max(wall[name], rows / (time.perf_counter() - t0))
                cpu[name] = max(cpu[name], rows / max(time.process_time() - c0, 1e-9))
    return wall, cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=400_000)
    p.add_argument("--files", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--format", choices=["parquet", "jsonl"], default="parquet")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    cfg = load_config(ROOT / "examples" / "dlrm_synthetic.yaml")
    schema = cfg.data.schema_
    with tempfile.TemporaryDirectory() as tmp:
        generate_ctr(tmp, num_train=args.rows, num_eval=1000, files=args.files, seed=0)
        files = resolve_paths(Path(tmp) / "train")
        cols, fmt = schema.columns, args.format
        if fmt == "jsonl":
            files = [as_jsonl(f) for f in files]

        rates, cpu = best_rates(
            {
                "raw": lambda: raw_pyarrow(files, cols, fmt),
                "plain": lambda: read_all(
                    Reader(files, schema, args.batch_size, prefetch=2, format=fmt)
                ),
                "shuffled": lambda: read_all(
                    Reader(files, schema, args.batch_size, shuffle=True, seed=0, format=fmt)
                ),
            },
            args.repeats,
        )
        raw, plain, shuffled = rates["raw"], rates["plain"], rates["shuffled"]

        model = build_model(cfg.model, schema, torch.device("cpu"))
        trainer = Trainer(model, [], None, cfg.train, run_dir=None)
        batches = []
        for b in Reader(files, schema, args.batch_size, shuffle=True, seed=0, format=fmt):
            batches.append(b)
            if len(batches) == args.steps + 3:
                break
        for b in batches[:3]:
            trainer.train_step(b)
        t0 = time.perf_counter()
        for b in batches[3:]:
            trainer.train_step(b)
        train = args.steps * args.batch_size / (time.perf_counter() - t0)

    print(
        f"rows: {args.rows} in {args.files} {args.format} files, batch {args.batch_size},"
        f" {args.threads} threads"
    )
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("                                   wall rows/s   rows per CPU-s")
    print(f"raw pyarrow read+to_numpy       : {raw:12,.0f} {cpu['raw']:14,.0f}")
    print(f"recis Reader (no shuffle)       : {plain:12,.0f} {cpu['plain']:14,.0f}")
    print(f"recis Reader (shuffle, prefetch): {shuffled:12,.0f} {cpu['shuffled']:14,.0f}")
    print(f"DLRM train_step                 : {train:12,.0f} rows/s")
    print(
        json.dumps(
            {
                "format": args.format,
                "vs_raw_pyarrow": round(plain / raw, 3),
                "vs_train_step": round(shuffled / train, 2),
                "vs_raw_pyarrow_cpu": round(cpu["plain"] / cpu["raw"], 3),
                "raw_rows_per_s": round(raw),
                "reader_rows_per_s": round(plain),
                "reader_shuffle_rows_per_s": round(shuffled),
                "train_rows_per_s": round(train),
            }
        )
    )


if __name__ == "__main__":
    main()
