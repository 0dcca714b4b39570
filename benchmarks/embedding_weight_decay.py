"""Cost of embedding weight decay: a training step of a hashed collection with and without.

    .venv/bin/python benchmarks/embedding_weight_decay.py [--tables 8 --rows 100000 --dim 16
        --batch 4096 --ids-per-bag 1 --steps 10]

Forward + backward (the fused update) of ``--tables`` tables of one feature each, ids
uniform over ``rows / ids-per-bag`` rows; the two settings alternate in rounds of
``--steps`` steps and the fastest round of 5 counts (one thread). Decay on CPU adds every
table's distinct rows as extra bags (recis.embedding.groups.FbgemmTableGroup._lookup), so
its cost grows with the batch's distinct rows. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recis.config import SparseOptimizerConfig, TableConfig
from recis.embedding import build_embedding_collection
from recis.features import SparseFeature


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tables", type=int, default=8)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--ids-per-bag", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t, b, n = args.tables, args.batch, args.ids_per_bag
    feats = [SparseFeature(name=f"f{i}", table=f"t{i}") for i in range(t)]
    tables = [
        TableConfig(name=f"t{i}", dim=args.dim, capacity=args.rows, mapper="none") for i in range(t)
    ]
    gen = torch.Generator().manual_seed(0)
    kjt = KeyedJaggedTensor(
        keys=[f.name for f in feats],
        values=torch.randint(0, args.rows // n, (t * b * n,), generator=gen),
        lengths=torch.full((t * b,), n, dtype=torch.int64),
    )
    out: dict[str, float] = {}
    for name in ("sgd", "adagrad", "rowwise_adagrad", "adam"):
        colls = {
            wd: build_embedding_collection(
                tables, feats, "cpu", optimizer=SparseOptimizerConfig(name=name, weight_decay=wd)
            )
            for wd in (0.0, 1e-4)
        }
        best = {wd: float("inf") for wd in colls}
        for _ in range(5):
            for wd, ec in colls.items():
                ec(kjt).values().sum().backward()  # warm
                start = time.perf_counter()
                for _ in range(args.steps):
                    ec(kjt).values().sum().backward()
                best[wd] = min(best[wd], (time.perf_counter() - start) / args.steps * 1e3)
        ratio = best[1e-4] / best[0.0]
        print(f"{name:16s} no decay {best[0.0]:7.1f} ms  decay {best[1e-4]:7.1f} ms  x{ratio:.2f}")
        out[name] = round(ratio, 2)
    print(json.dumps({"decay_over_none": out, **vars(args)}))


if __name__ == "__main__":
    main()
