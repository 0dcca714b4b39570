"""Hashed embedding engine vs torchrec, nn.EmbeddingBag, torchrec MCH and a dict.

    .venv/bin/python benchmarks/embedding.py [--steps 8] [--capacity 100000]

Shapes (issue 3): 26 features x 8 ids per sample, dim 64, batch 2048, 2 threads,
Zipf-like ids drawn from the full 64-bit space (Zipf rank hashed with the
feature's salt). All sides run in this one process on the same batches, with
their steps interleaved so machine noise hits them alike; each figure is the
fastest step of its side (medians are printed too).

1. step time (forward + backward + fused Adagrad update) of
   HashedEmbeddingCollection on raw ids (mapping included) vs torchrec's
   FusedEmbeddingBagCollection (fbgemm TBE, Adagrad) on ids mapped beforehand,
   and vs nn.EmbeddingBag(sparse=True) + torch.optim.Adagrad on the same rows;
2. IdMapper lookup-and-insert (LRU) vs MCHManagedCollisionModule (LRU,
   eviction every step) vs a Python dict, in M ids/s;
3. resident memory of a 10M-row dim-16 Adagrad table with its mapper, divided
   by the bytes of its weights plus optimizer state (in a child process).

Last line: one JSON object with vs_torchrec, vs_naive, mapper_vs_mch,
mapper_mids_per_s, memory_ratio (and the raw figures).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
import torch

F, L, D, B = 26, 8, 64, 2048


def zipf_batches(steps: int, seed: int, a: float = 1.2) -> list[list[np.ndarray]]:
    """``steps`` batches of ``F`` int64 arrays ``[B * L]`` of 64-bit ids."""
    from recis.ops.hashing import hash_int64

    gen = np.random.default_rng(seed)
    return [[hash_int64(gen.zipf(a, B * L), f"f{f}") for f in range(F)] for _ in range(steps)]


def to_kjt(ids: list[np.ndarray]):
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    return KeyedJaggedTensor(
        keys=[f"f{f}" for f in range(F)],
        values=torch.from_numpy(np.concatenate(ids)),
        lengths=torch.full((F * B,), L, dtype=torch.int64),
    )


def setup(steps: int, capacity: int) -> dict:
    """Both collections and their inputs for ``steps`` batches: ``hashed`` (raw ids in
    ``raw``), torchrec's ``fused`` EBC (rows mapped beforehand in ``mapped``), ``grad``."""
    from torchrec import EmbeddingBagConfig
    from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection

    from recis.config import SparseOptimizerConfig, TableConfig
    from recis.embedding import build_embedding_collection
    from recis.features import SparseFeature
    from recis.ops.id_mapper import IdMapper

    batches = zipf_batches(steps, seed=0)
    tables = [TableConfig(name=f"t{f}", dim=D, capacity=capacity, eviction="lru") for f in range(F)]
    feats = [SparseFeature(name=f"f{f}", table=f"t{f}") for f in range(F)]
    opt = SparseOptimizerConfig(name="adagrad", lr=0.05)
    hashed = build_embedding_collection(tables, feats, "cpu", optimizer=opt)
    # the baselines get rows mapped beforehand (same rows, outside the timing)
    mappers = [IdMapper(capacity, eviction="lru") for _ in range(F)]
    mapped = []
    for step, ids in enumerate(batches, start=1):
        rows = [mappers[f].map(ids[f], step).rows + 1 for f in range(F)]
        mapped.append(to_kjt([r.numpy() for r in rows]))
    fused = FusedEmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(
                name=f"t{f}", embedding_dim=D, num_embeddings=capacity + 1, feature_names=[f"f{f}"]
            )
            for f in range(F)
        ],
        optimizer_type=torch.optim.Adagrad,
        optimizer_kwargs={"lr": 0.05},
    )
    raw = [to_kjt(ids) for ids in batches]
    return {
        "hashed": hashed,
        "raw": raw,
        "mapped": mapped,
        "fused": fused,
        "grad": torch.randn(B, F * D),
    }


def bench_collections(steps: int, capacity: int, warmup: int = 3) -> dict[str, float]:
    parts = setup(steps + warmup, capacity)
    hashed, raw, mapped, fused = parts["hashed"], parts["raw"], parts["mapped"], parts["fused"]
    bags = torch.nn.ModuleList(
        torch.nn.EmbeddingBag(capacity + 1, D, mode="sum", sparse=True) for _ in range(F)
    )
    naive_opt = torch.optim.Adagrad(bags.parameters(), lr=0.05)
    grad = parts["grad"]

    def run_hashed(i: int) -> None:
        hashed(raw[i]).values().mul(grad).sum().backward()

    def run_fused(i: int) -> None:
        fused(mapped[i]).values().mul(grad).sum().backward()

    def run_naive(i: int) -> None:
        kjt = mapped[i]
        vals = kjt.values().view(F, B * L)
        offsets = torch.arange(0, B * L, L)
        out = torch.cat([bags[f](vals[f], offsets) for f in range(F)], dim=1)
        naive_opt.zero_grad()
        out.mul(grad).sum().backward()
        naive_opt.step()

    sides = {"hashed": run_hashed, "torchrec": run_fused, "naive": run_naive}
    samples: dict[str, list[float]] = {k: [] for k in sides}
    hashed.train()
    for i in range(steps + warmup):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            fn(i)
            if i >= warmup:
                samples[name].append(time.perf_counter() - t0)
    # fastest step of each side (as timeit advises): on a shared machine, fbgemm's
    # OpenMP kernels slow down 2-10x whenever another process takes a core; the
    # median is reported too
    times = {k: float(np.min(v)) for k, v in samples.items()}
    med = {k: float(np.median(v)) for k, v in samples.items()}
    out = {f"{k}_mlookups_per_s": F * B * L / v / 1e6 for k, v in times.items()}
    out["vs_torchrec"] = times["torchrec"] / times["hashed"]
    out["vs_naive"] = times["naive"] / times["hashed"]
    out["vs_torchrec_median"] = med["torchrec"] / med["hashed"]
    out["vs_naive_median"] = med["naive"] / med["hashed"]
    out.update({f"{k}_ms_per_step": 1e3 * v for k, v in times.items()})
    out.update({f"{k}_ms_per_step_median": 1e3 * v for k, v in med.items()})
    return out


def bench_mappers(steps: int, capacity: int, warmup: int = 3) -> dict[str, float]:
    from torchrec.modules.mc_modules import LRU_EvictionPolicy, MCHManagedCollisionModule
    from torchrec.sparse.jagged_tensor import JaggedTensor

    from recis.ops.id_mapper import IdMapper

    gen = np.random.default_rng(1)
    from recis.ops.hashing import hash_int64

    stream = [
        torch.from_numpy(hash_int64(gen.zipf(1.2, B * L), "m")) for _ in range(steps + warmup)
    ]
    mine = IdMapper(capacity, eviction="lru")
    mch = MCHManagedCollisionModule(
        zch_size=capacity,
        device=torch.device("cpu"),
        eviction_policy=LRU_EvictionPolicy(),
        eviction_interval=1,
    )
    mch.train()
    d: dict[int, int] = {}
    samples: dict[str, list[float]] = {"mine": [], "mch": [], "dict": []}
    evictions = 0
    lengths = torch.ones(B * L, dtype=torch.int64)
    for i, ids in enumerate(stream):
        t0 = time.perf_counter()
        res = mine.map(ids, step=i + 1)
        evictions += len(res.reset_rows)
        t1 = time.perf_counter()
        # MCH wants non-negative ids in [0, input_hash_size): its default preprocess does that
        mch({"m": JaggedTensor(values=ids, lengths=lengths)})
        t2 = time.perf_counter()
        [d.setdefault(k, len(d)) for k in ids.tolist()]
        t3 = time.perf_counter()
        if i >= warmup:
            for k, v in (("mine", t1 - t0), ("mch", t2 - t1), ("dict", t3 - t2)):
                samples[k].append(v)
    times = {k: float(np.min(v)) for k, v in samples.items()}  # fastest step
    n = B * L
    return {
        "mapper_mids_per_s": n / times["mine"] / 1e6,
        "mch_mids_per_s": n / times["mch"] / 1e6,
        "dict_mids_per_s": n / times["dict"] / 1e6,
        "mapper_vs_mch": times["mch"] / times["mine"],
        "mapper_vs_dict": times["dict"] / times["mine"],
        "mapper_evicted_rows": float(evictions),
    }


_MEMORY_CHILD = r"""
import json, os, sys, numpy as np, torch
torch.set_num_threads(2)
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
from recis.config import SparseOptimizerConfig, TableConfig
from recis.embedding import build_embedding_collection
from recis.features import SparseFeature
rows, opt = int(sys.argv[1]), sys.argv[2]
base = rss()
ec = build_embedding_collection(
    [TableConfig(name="t", dim=16, capacity=rows, eviction="lru")],
    [SparseFeature(name="t")], "cpu", optimizer=SparseOptimizerConfig(name=opt))
m = ec.mappers["t"]
gen = np.random.default_rng(0)
chunk = 1_000_000
for i in range(0, rows, chunk):  # fill every row with a random 64-bit id
    m.map(gen.integers(-2**63, 2**63 - 1, min(chunk, rows - i), dtype=np.int64), step=1)
used = rss() - base
state = rows * 16 * 4 if opt == "adagrad" else rows * 4  # row-wise: one float per row
table = rows * 16 * 4 + state  # fp32 weights + optimizer state
print(json.dumps({"rss_bytes": used, "table_bytes": table, "size": m.size}))
"""


def bench_memory(rows: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for opt, suffix in (("adagrad", ""), ("rowwise_adagrad", "_rowwise")):
        run = subprocess.run(
            [sys.executable, "-c", _MEMORY_CHILD, str(rows), opt],
            capture_output=True,
            text=True,
            check=True,
        )
        res = json.loads(run.stdout.strip().splitlines()[-1])
        out[f"memory_ratio{suffix}"] = res["rss_bytes"] / res["table_bytes"]
        out[f"memory_mb{suffix}"] = res["rss_bytes"] / 2**20
        out["memory_rows"] = res["size"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--capacity", type=int, default=100_000)
    p.add_argument("--mapper-steps", type=int, default=30)
    # small enough that the mapper is full after a few steps and evicts (LRU) from then on
    p.add_argument("--mapper-capacity", type=int, default=32_768)
    p.add_argument("--memory-rows", type=int, default=10_000_000)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    result: dict[str, float] = {}
    result.update(bench_collections(args.steps, args.capacity))
    print({k: round(v, 3) for k, v in result.items()}, flush=True)
    result.update(bench_mappers(args.mapper_steps, args.mapper_capacity))
    print({k: round(v, 3) for k, v in result.items()}, flush=True)
    result.update(bench_memory(args.memory_rows))
    print(json.dumps({k: round(v, 3) for k, v in result.items()}))


if __name__ == "__main__":
    main()
