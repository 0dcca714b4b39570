"""Where a training step of benchmarks/embedding.py goes, phase by phase.

    .venv/bin/python benchmarks/embedding_breakdown.py [--steps 12]

Same shapes and batches as ``benchmarks/embedding.py`` (26 features x 8 ids, dim
64, batch 2048, 2 threads, Zipf ids over the 64-bit space, Adagrad). Hashed
collection: mapping (all IdMappers), TBE forward, the rest of ``lookup`` (index
prep, fallback rows, outputs), the benchmark's loss, backward (fused update).
torchrec ``FusedEmbeddingBagCollection`` on pre-mapped ids: forward, loss,
backward. Steps of the two sides are interleaved; prints fastest and median ms
per phase (wall clock), then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import embedding as bench
import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--capacity", type=int, default=100_000)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warm = 3
    parts = bench.setup(args.steps + warm, args.capacity)
    hashed, raw, mapped, fused = parts["hashed"], parts["raw"], parts["mapped"], parts["fused"]
    hashed.train()
    grad = parts["grad"]
    t: dict[str, list[float]] = defaultdict(list)

    # wrap the hashed collection's phases with timers (instance attributes only)
    map_all = hashed._map_all

    def timed_map_all(ids):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        out = map_all(ids)
        t["hashed.map"].append(time.perf_counter() - t0)
        return out

    hashed._map_all = timed_map_all
    for grp in hashed.groups.values():
        fwd = grp.forward

        def timed_fwd(*a, _fwd=fwd, **k):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            out = _fwd(*a, **k)
            t["hashed.tbe_forward"].append(time.perf_counter() - t0)
            return out

        grp.forward = timed_fwd

    def step(name: str, module, kjt) -> None:  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        out = module(kjt).values()
        t1 = time.perf_counter()
        loss = out.mul(grad).sum()
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        t[f"{name}.forward"].append(t1 - t0)
        t[f"{name}.loss"].append(t2 - t1)
        t[f"{name}.backward"].append(t3 - t2)
        t[f"{name}.step"].append(t3 - t0)

    for i in range(args.steps + warm):
        step("hashed", hashed, raw[i])
        step("torchrec", fused, mapped[i])
    n = args.steps
    res = {k: v[-n:] for k, v in t.items()}
    res["hashed.lookup_rest"] = [
        a - b - c
        for a, b, c in zip(res["hashed.forward"], res["hashed.map"], res["hashed.tbe_forward"])
    ]
    out = {}
    for k in sorted(res):
        lo, med = 1e3 * float(np.min(res[k])), 1e3 * float(np.median(res[k]))
        print(f"{k:24s} fastest {lo:7.2f} ms   median {med:7.2f} ms")
        out[k] = round(lo, 2)
        out[k + "_median"] = round(med, 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
