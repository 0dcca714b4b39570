"""fbgemm's CPU TBE backward: unpooled (PoolingMode.NONE) vs a SUM lookup of one-id bags.

    .venv/bin/python benchmarks/fbgemm_unpooled.py [--tables 26 --rows 50000 --dim 16 --ids 4000]

Both return the same rows and apply the same fused update; recis runs pooling ``none``
as the second (recis.embedding.groups.FbgemmTableGroup._unpooled) because of what this
prints. Fastest of 5 steps each, one thread. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
    ComputeDevice,
    SplitTableBatchedEmbeddingBagsCodegen,
)


def backward_ms(mode: PoolingMode, opt: EmbOptimType, args: argparse.Namespace) -> float:
    t, n = args.tables, args.ids
    spec = [(args.rows, args.dim, EmbeddingLocation.HOST, ComputeDevice.CPU)] * t
    tbe = SplitTableBatchedEmbeddingBagsCodegen(
        spec, optimizer=opt, pooling_mode=mode, learning_rate=0.1, device="cpu"
    )
    idx = torch.randint(0, args.rows, (t * n,), generator=torch.Generator().manual_seed(0))
    # NONE: one bag per table holding its n ids; SUM: every id a bag of its own
    off = torch.arange(0, t * n + 1, n) if mode == PoolingMode.NONE else torch.arange(t * n + 1)
    best = float("inf")
    for _ in range(5):
        out = tbe(idx, off)
        t0 = time.perf_counter()
        out.sum().backward()
        best = min(best, time.perf_counter() - t0)
    return 1e3 * best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tables", type=int, default=26)
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--ids", type=int, default=4000, help="ids per table")
    args = p.parse_args()
    torch.set_num_threads(1)
    result = {}
    for name, opt in (
        ("rowwise_adagrad", EmbOptimType.EXACT_ROWWISE_ADAGRAD),
        ("adagrad", EmbOptimType.EXACT_ADAGRAD),
    ):
        none, one = (
            backward_ms(PoolingMode.NONE, opt, args),
            backward_ms(PoolingMode.SUM, opt, args),
        )
        print(f"{name:>16}: NONE backward {none:7.1f} ms, SUM of one-id bags {one:6.1f} ms")
        result[f"{name}_none_ms"], result[f"{name}_sum_ms"] = round(none, 1), round(one, 1)
        result[f"{name}_ratio"] = round(none / one, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
