"""Where a training step of benchmarks/embedding.py goes, phase by phase.

    .venv/bin/python benchmarks/embedding_breakdown.py [--steps 12]

Same shapes and batches as ``benchmarks/embedding.py`` (26 features x 8 ids, dim
64, batch 2048, Zipf ids over the 64-bit space; ``--optimizer``, default row-wise
Adagrad; ``--threads``, default the usable cores). Hashed
collection: mapping (all IdMappers), TBE forward, the rest of ``lookup`` (index
prep, fallback rows, outputs), the benchmark's loss, backward (fused update).
torchrec ``FusedEmbeddingBagCollection`` on pre-mapped ids: forward, loss,
backward. Steps of the two sides are interleaved; prints the median, min and max ms
per phase (wall clock) and the load average, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict

import embedding as bench
import numpy as np
import torch

from recis.ops.cores import usable_cores


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--capacity", type=int, default=100_000)
    p.add_argument("--threads", type=int, default=None, help="default: usable cores")
    p.add_argument("--optimizer", default="rowwise_adagrad", choices=bench.OPTIMIZERS[:3])
    args = p.parse_args()
    torch.set_num_threads(args.threads or usable_cores())
    warm = 3
    batches = bench.zipf_batches(args.steps + warm, seed=0)
    raw = [bench.to_kjt(ids) for ids in batches]
    mapped = bench.premapped(batches, args.capacity)
    hashed = bench.hashed_collection(args.optimizer, args.capacity)
    _, fused_step = bench.baseline(args.optimizer, args.capacity)
    fused = _Fused(fused_step)
    grad = torch.randn(bench.B, bench.F * bench.D)
    load0 = os.getloadavg()[0]
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
        if isinstance(module, _Fused):  # torchrec: forward + loss + backward in one call
            t0 = time.perf_counter()
            module.run(kjt, grad)
            t["torchrec.step"].append(time.perf_counter() - t0)
            return
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
    out: dict[str, float] = {"load": round((load0 + os.getloadavg()[0]) / 2, 2)}
    for k in sorted(res):
        v = 1e3 * np.asarray(res[k])
        med, lo, hi = float(np.median(v)), float(v.min()), float(v.max())
        print(f"{k:24s} median {med:7.2f} ms   min {lo:7.2f}   max {hi:7.2f}")
        out[k] = round(med, 2)
        out[k + "_min"], out[k + "_max"] = round(lo, 2), round(hi, 2)
    print(f"load average {out['load']}")
    print(json.dumps(out))


class _Fused:
    """torchrec's side: its step function (forward, loss, backward) on a pre-mapped KJT."""

    def __init__(self, run) -> None:  # type: ignore[no-untyped-def]
        self.run = run


if __name__ == "__main__":
    main()
