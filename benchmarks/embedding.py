"""Hashed embedding engine vs torchrec fused EBC, per sparse optimizer, at 1 thread and all cores.

    .venv/bin/python benchmarks/embedding.py [--runs 5] [--steps 2] [--capacity 100000]

Shapes (issue 3): 26 features x 8 ids per sample, dim 64, batch 2048, Zipf-like ids
drawn from the full 64-bit space (Zipf rank hashed with the feature's salt). Timing
(``benchmarks/_timing.py``): every ratio is the ratio of MEDIAN run times over
``--runs`` alternating runs (a run: ``--steps`` training steps), with the min and max
of the per-round ratios and the CPU-time ratio; the 1-minute load average is printed
beside each block. "all" threads means :func:`recis.ops.cores.usable_cores` (the
affinity mask, capped by a cgroup quota), not the machine's core count.

1. training step (forward + backward + fused sparse update) of HashedEmbeddingCollection
   on raw ids (id mapping included) vs torchrec's FusedEmbeddingBagCollection on ids
   mapped beforehand, for SGD, Adagrad and row-wise Adagrad (``vs_torchrec_<opt>_<t>``,
   > 1: recis faster); Adam, which fbgemm lacks on CPU, against nn.EmbeddingBag(sparse)
   + torch.optim.SparseAdam (``vs_sparseadam_<t>``);
2. ``map_ahead_<t>``: a training step of recis' DLRM (default MLPs, 13 dense inputs,
   the 26 tables above with row-wise Adagrad, Adam on the dense part) with ``map_ahead``
   off / on: the next batch's ids looked up in the background during this step (> 1:
   faster with it); the probe in flight finishes before each run starts, so a run's
   first step finds it done, as in a steady pipeline;
3. ``busy_slowdown``: median row-wise step at all cores with a CPU-bound process pinned
   to the same cores / median idle step (busy and idle runs alternate in this run);
4. IdMapper (26 LRU tables, one call per step as the collection makes it): M ids/s
   for batches of only new ids and of only known ids, and vs torchrec MCH on a Zipf
   stream (eviction every step);
5. resident memory of a full 1M-row dim-16 table with its mapper, per optimizer, divided
   by the bytes of its weights plus optimizer state: the default table (no eviction) and
   an LRU one (``_lru``), and Adagrad at sizes around ``0.9 * 2^20`` (cliffs). One child
   process per eviction kind, one table at a time, after a 16-row table of each kind
   (what any first table loads, ~2.7 MB, is the process's, not the table's);
6. ``distributed_vs_threads``: ``benchmarks/distributed.py --vs-threads`` (sharded DLRM,
   2 processes x 1 thread vs 1 process x 2 threads, same global batch; ``--dist-rounds``
   alternating rounds, default 5, 8 steps each) with its CPU-time cap ``distributed_cpu_cap``.

Last line: one JSON object with the goal keys ``vs_torchrec_rowwise_1t``,
``vs_torchrec_adagrad_1t``, ``vs_torchrec_rowwise_all``, ``mapper_new_mids_per_s``,
``mapper_known_mids_per_s``, ``memory_ratio_1m`` (the worst optimizer, default tables; per
optimizer as ``memory_ratio_1m_<opt>``, with LRU as ``memory_ratio_1m_lru_<opt>``),
``busy_slowdown``, ``distributed_vs_threads``, and the raw figures.

"""

from __future__ import annotations  # noqa: I001  (recis is imported before torch, below)

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import recis  # noqa: F401  # before torch: recis sets the OpenMP wait policy
import torch
from _timing import alternate, competitor, load, ratio

F, L, D, B = 26, 8, 64, 2048
OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad", "adam")
SHORT = {"sgd": "sgd", "adagrad": "adagrad", "rowwise_adagrad": "rowwise", "adam": "adam"}


def zipf_batches(steps: int, seed: int, a: float = 1.2) -> list[list[np.ndarray]]:
    """``steps`` batches of ``F`` int64 arrays ``[B * L]`` of 64-bit ids."""
    from recis.ops.hashing import hash_int64

    gen = np.random.default_rng(seed)
    return [[hash_int64(gen.zipf(a, B * L), f"f{f}") for f in range(F)] for _ in range(steps)]


def to_kjt(ids: list[np.ndarray]):  # type: ignore[no-untyped-def]  # KeyedJaggedTensor
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    return KeyedJaggedTensor(
        keys=[f"f{f}" for f in range(F)],
        values=torch.from_numpy(np.concatenate(ids)),
        lengths=torch.full((F * B,), L, dtype=torch.int64),
    )


def premapped(batches: list[list[np.ndarray]], capacity: int) -> list:  # type: ignore[type-arg]
    """The batches as rows ``[1, capacity]`` (row 0: fallback), mapped beforehand."""
    from recis.ops.id_mapper import IdMapper

    mappers = [IdMapper(capacity, eviction="lru") for _ in range(F)]
    out = []
    for step, ids in enumerate(batches, start=1):
        rows = [mappers[f].map(ids[f], step).rows + 1 for f in range(F)]
        out.append(to_kjt([r.numpy() for r in rows]))
    return out


def hashed_collection(opt: str, capacity: int):  # type: ignore[no-untyped-def]
    from recis.config import SparseOptimizerConfig, TableConfig
    from recis.embedding import build_embedding_collection
    from recis.features import SparseFeature

    tables = [TableConfig(name=f"t{f}", dim=D, capacity=capacity, eviction="lru") for f in range(F)]
    feats = [SparseFeature(name=f"f{f}", table=f"t{f}") for f in range(F)]
    ec = build_embedding_collection(
        tables, feats, "cpu", optimizer=SparseOptimizerConfig(name=opt, lr=0.05)
    )
    ec.train()
    return ec


def baseline(opt: str, capacity: int) -> tuple[str, Callable[[object, torch.Tensor], None]]:
    """(name, step function on a pre-mapped KJT) of the side recis is compared with."""
    if opt == "adam":
        bags = torch.nn.ModuleList(
            torch.nn.EmbeddingBag(capacity + 1, D, mode="sum", sparse=True) for _ in range(F)
        )
        sparse_adam = torch.optim.SparseAdam(list(bags.parameters()), lr=0.05)
        offsets = torch.arange(0, B * L, L)

        def naive(kjt, grad: torch.Tensor) -> None:  # type: ignore[no-untyped-def]
            vals = kjt.values().view(F, B * L)
            out = torch.cat([bags[f](vals[f], offsets) for f in range(F)], dim=1)
            sparse_adam.zero_grad()
            out.mul(grad).sum().backward()
            sparse_adam.step()

        return "sparseadam", naive
    from torchrec import EmbeddingBagConfig
    from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection
    from torchrec.optim import RowWiseAdagrad

    kind = {
        "sgd": torch.optim.SGD,
        "adagrad": torch.optim.Adagrad,
        "rowwise_adagrad": RowWiseAdagrad,
    }
    fused = FusedEmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(
                name=f"t{f}", embedding_dim=D, num_embeddings=capacity + 1, feature_names=[f"f{f}"]
            )
            for f in range(F)
        ],
        optimizer_type=kind[opt],
        optimizer_kwargs={"lr": 0.05},
    )

    def run(kjt, grad: torch.Tensor) -> None:  # type: ignore[no-untyped-def]
        fused(kjt).values().mul(grad).sum().backward()

    return "torchrec", run


def bench_steps(opt: str, tag: str, args: argparse.Namespace) -> dict[str, float]:
    """recis vs its baseline for one optimizer at the current thread count."""
    n = (args.warmup + args.runs) * args.steps
    batches = zipf_batches(n, seed=0)
    raw = [to_kjt(ids) for ids in batches]
    mapped = premapped(batches, args.capacity)
    grad = torch.randn(B, F * D)
    hashed = hashed_collection(opt, args.capacity)
    base_name, base_step = baseline(opt, args.capacity)

    def recis_step(i: int) -> None:
        hashed(raw[i]).values().mul(grad).sum().backward()

    lo = load()
    runs = alternate(
        {"recis": recis_step, base_name: lambda i: base_step(mapped[i], grad)},
        args.runs,
        args.steps,
        args.warmup,
    )
    key = (
        f"vs_{base_name}_{SHORT[opt]}_{tag}" if base_name == "torchrec" else f"vs_{base_name}_{tag}"
    )
    out = ratio(runs[base_name], runs["recis"], key)
    out.update(runs["recis"].stats(f"recis_{SHORT[opt]}_{tag}"))
    out.update(runs[base_name].stats(f"{base_name}_{SHORT[opt]}_{tag}"))
    out[f"load_{SHORT[opt]}_{tag}"] = (lo + load()) / 2
    return out


def dlrm_step(map_ahead: bool, capacity: int, raw: list) -> tuple[Callable[[int], None], object]:  # type: ignore[type-arg]
    """A training step of recis' DLRM (default MLPs, 13 dense inputs) over the benchmark's
    26 LRU tables (row-wise Adagrad), Adam on the dense part; the step of call ``i`` trains
    on ``raw[i]`` and names ``raw[i + 1]`` as the next batch. Returns (step, collection)."""
    from recis.config import TableConfig
    from recis.features import DenseFeature, LabelSpec, Schema, SparseFeature
    from recis.io.batch import Batch
    from recis.models import DLRM, DLRMConfig

    schema = Schema(
        dense=[DenseFeature(f"d{i}") for i in range(13)],
        sparse=[SparseFeature(name=f"f{f}", table=f"t{f}") for f in range(F)],
        labels=[LabelSpec("click", column="label")],
    )
    torch.manual_seed(0)
    tables = [TableConfig(name=f"t{f}", dim=D, capacity=capacity, eviction="lru") for f in range(F)]
    model = DLRM(DLRMConfig(tables=tables, bottom_mlp=[64, D]), schema, torch.device("cpu"))
    model.train()
    model.sparse_arch.map_ahead = map_ahead
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    dense = torch.randn(B, 13, generator=gen)
    label = {"click": (torch.rand(B, generator=gen) < 0.25).float()}

    def step(i: int) -> None:
        model.sparse_arch.prefetch(raw[i + 1])
        logit = model(Batch(raw[i], dense, label))["click"]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, label["click"])
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step, model.sparse_arch


def bench_map_ahead(tag: str, args: argparse.Namespace) -> dict[str, float]:
    """recis' DLRM training step with mapping ahead off vs on (the same stream)."""
    n = (args.warmup + args.runs) * args.steps
    raw = [to_kjt(ids) for ids in zipf_batches(n + 1, seed=4)]
    built = {
        name: dlrm_step(on, args.capacity, raw) for name, on in (("plain", False), ("ahead", True))
    }
    lo = load()
    # the probe started by a run's last step finishes before the next run starts (either
    # side's): each run's first step then finds it done, as in a steady pipeline, where
    # it ran during the step before, and it never competes with the other side's run
    runs = alternate(
        {k: v[0] for k, v in built.items()},
        args.runs,
        args.steps,
        args.warmup,
        before=lambda name: built["ahead"][1].settle_ahead(),
    )
    out = ratio(runs["plain"], runs["ahead"], f"map_ahead_{tag}")
    out.update(runs["plain"].stats(f"map_ahead_plain_{tag}"))
    out.update(runs["ahead"].stats(f"map_ahead_on_{tag}"))
    out[f"map_ahead_used_{tag}"] = built["ahead"][1].prefetched_lookups
    out[f"load_map_ahead_{tag}"] = (lo + load()) / 2
    return out


def bench_busy(args: argparse.Namespace, cores: set[int]) -> dict[str, float]:
    """Median row-wise step with a competing CPU-bound process on the same cores / idle."""
    n = (args.warmup + 2 * args.runs) * args.steps * 2
    raw = [to_kjt(ids) for ids in zipf_batches(n, seed=2)]
    grad = torch.randn(B, F * D)
    hashed = hashed_collection("rowwise_adagrad", args.capacity)
    lo = load()
    state = {"i": 0}

    def step(_: int) -> None:  # both sides step through one stream of batches
        hashed(raw[state["i"]]).values().mul(grad).sum().backward()
        state["i"] += 1

    with competitor(cores) as on:
        runs = alternate(
            {"idle": step, "busy": step},
            args.runs,
            args.steps,
            before=lambda name: on(name == "busy"),
        )
        on(False)
    out = ratio(runs["busy"], runs["idle"], "busy_slowdown")
    out.update(runs["idle"].stats("busy_idle_step"))
    out.update(runs["busy"].stats("busy_busy_step"))
    out["load_busy"] = (lo + load()) / 2
    return out


def map_step(mappers: list, ids: list[np.ndarray], step: int) -> None:  # type: ignore[type-arg]
    """One step's id mapping of all tables, as the collection makes it."""
    from recis.ops import id_mapper

    many = getattr(id_mapper, "map_many", None)  # the fused call, where this checkout has it
    if many is not None:
        many(mappers, ids, step)
    else:
        for m, x in zip(mappers, ids):
            m.map(x, step)


def bench_mapper(args: argparse.Namespace) -> dict[str, float]:
    """M ids/s of one step's mapping of F tables: only new ids, and only known ids.

    Each side has its own tables: ``new`` maps a batch of ids never seen before each run,
    ``known`` maps a batch it was given before the timing (so the alternating order of
    the sides cannot turn one's ids into the other's). Each has twice the rows its ids
    need (a full table takes the slower path that makes room first)."""
    from recis.ops.id_mapper import IdMapper

    gen = np.random.default_rng(3)
    n = args.warmup + args.runs

    def batches() -> list[list[np.ndarray]]:
        return [
            [gen.integers(-(2**63), 2**63 - 1, B * L, dtype=np.int64) for _ in range(F)]
            for _ in range(n)
        ]

    fresh, seen = batches(), batches()
    new = [IdMapper(2 * n * B * L, eviction="lru") for _ in range(F)]
    known = [IdMapper(2 * n * B * L, eviction="lru") for _ in range(F)]
    for i, ids in enumerate(seen):
        map_step(known, ids, i + 1)
    lo = load()
    runs = alternate(
        {
            "new": lambda i: map_step(new, fresh[i], i + 1),
            "known": lambda i: map_step(known, seen[i], n + i + 1),
        },
        args.runs,
    )
    ids = F * B * L
    return {
        "mapper_new_mids_per_s": ids / float(np.median(runs["new"].wall)) / 1e6,
        "mapper_new_mids_per_s_min": ids / max(runs["new"].wall) / 1e6,
        "mapper_new_mids_per_s_max": ids / min(runs["new"].wall) / 1e6,
        "mapper_known_mids_per_s": ids / float(np.median(runs["known"].wall)) / 1e6,
        "mapper_known_mids_per_s_min": ids / max(runs["known"].wall) / 1e6,
        "mapper_known_mids_per_s_max": ids / min(runs["known"].wall) / 1e6,
        "mapper_new_mids_per_cpu_s": ids / float(np.median(runs["new"].cpu)) / 1e6,
        "mapper_known_mids_per_cpu_s": ids / float(np.median(runs["known"].cpu)) / 1e6,
        "load_mapper": (lo + load()) / 2,
    }


def bench_mch(args: argparse.Namespace, capacity: int = 32_768) -> dict[str, float]:
    """One LRU IdMapper vs torchrec's MCH (eviction every step) on one Zipf stream."""
    from torchrec.modules.mc_modules import LRU_EvictionPolicy, MCHManagedCollisionModule
    from torchrec.sparse.jagged_tensor import JaggedTensor

    from recis.ops.hashing import hash_int64
    from recis.ops.id_mapper import IdMapper

    gen = np.random.default_rng(1)
    n = args.warmup + args.runs
    stream = [torch.from_numpy(hash_int64(gen.zipf(1.2, B * L), "m")) for _ in range(n)]
    mine = IdMapper(capacity, eviction="lru")
    mch = MCHManagedCollisionModule(
        zch_size=capacity,
        device=torch.device("cpu"),
        eviction_policy=LRU_EvictionPolicy(),
        eviction_interval=1,
    )
    mch.train()
    lengths = torch.ones(B * L, dtype=torch.int64)
    runs = alternate(
        {
            "mine": lambda i: mine.map(stream[i], step=i + 1),
            "mch": lambda i: mch({"m": JaggedTensor(values=stream[i], lengths=lengths)}),
        },
        args.runs,
    )
    out = ratio(runs["mch"], runs["mine"], "mapper_vs_mch")
    out["mapper_zipf_mids_per_s"] = B * L / float(np.median(runs["mine"].wall)) / 1e6
    out["mch_mids_per_s"] = B * L / float(np.median(runs["mch"].wall)) / 1e6
    return out


_MEMORY_CHILD = r"""
import ctypes, gc, json, os, sys, numpy as np, torch
torch.set_num_threads(1)
def rss():
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap pages back first
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
from recis.config import SparseOptimizerConfig, TableConfig
from recis.embedding import build_embedding_collection
from recis.features import SparseFeature
eviction, dim = sys.argv[1], 16
def table(name, capacity, opt):
    return build_embedding_collection(
        [TableConfig(name=name, dim=dim, capacity=capacity, eviction=eviction)],
        [SparseFeature(name=name)], "cpu", optimizer=SparseOptimizerConfig(name=opt))
# a 16-row table of each kind first: the code, libraries and one-time buffers they load
# (~2.7 MB, whatever the table's size) are the process's, not the table's
for opt in {o for o, _ in json.loads(sys.argv[2])}:
    table("warm", 16, opt).mappers["warm"].map(np.arange(4), step=1)
out = []
for opt, rows in json.loads(sys.argv[2]):  # one table at a time, all freed before the next
    base = rss()
    ec = table("t", rows, opt)
    gen = np.random.default_rng(0)
    for i in range(0, rows, 1_000_000):  # fill every row with a random 64-bit id
        n = min(1_000_000, rows - i)
        ec.mappers["t"].map(gen.integers(-2**63, 2**63 - 1, n, dtype=np.int64), step=1)
    used = rss() - base
    del ec
    w = rows * dim * 4  # fp32 weights
    state = {"sgd": 0, "adagrad": w, "rowwise_adagrad": rows * 4, "adam": 2 * w + rows * 4}[opt]
    out.append(used / (w + state))
print(json.dumps(out))
"""


def memory_ratios(eviction: str, tables: list[tuple[str, int]]) -> list[float]:
    """Per (optimizer, rows) of ``tables``: resident bytes of a full dim-16 table with its
    mapper (after ``malloc_trim``) over the bytes of its weights plus optimizer state;
    measured one table at a time in one child process."""
    run = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, eviction, json.dumps(tables)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [float(x) for x in json.loads(run.stdout.strip().splitlines()[-1])]


def bench_memory(rows: int, cliff_sizes: list[int]) -> dict[str, float]:
    """Per optimizer: the default table (``eviction: none``, the goal key
    ``memory_ratio_1m_<opt>``) and an LRU table (``memory_ratio_1m_lru_<opt>``: + 4 bytes
    per row of last-seen step); Adagrad at sizes around ``0.9 * 2^20`` (no cliffs)."""
    out: dict[str, float] = {}
    tables = [(o, rows) for o in OPTIMIZERS]
    default = memory_ratios("none", tables + [("adagrad", n) for n in cliff_sizes])
    for o, r in zip(OPTIMIZERS, default):
        out[f"memory_ratio_1m_{SHORT[o]}"] = r
    for n, r in zip(cliff_sizes, default[len(OPTIMIZERS) :]):
        out[f"memory_ratio_adagrad_{n}"] = r
    for o, r in zip(OPTIMIZERS, memory_ratios("lru", tables)):
        out[f"memory_ratio_1m_lru_{SHORT[o]}"] = r
    out["memory_ratio_1m"] = max(out[f"memory_ratio_1m_{SHORT[o]}"] for o in OPTIMIZERS)
    out["memory_ratio_1m_lru"] = max(out[f"memory_ratio_1m_lru_{SHORT[o]}"] for o in OPTIMIZERS)
    return out


def bench_distributed(args: argparse.Namespace) -> dict[str, float]:
    """``benchmarks/distributed.py --vs-threads``: 2 processes x 1 thread vs 1 process x 2
    threads on the same global batch of the sharded DLRM step (its last-line JSON)."""
    cmd = [sys.executable, os.path.join(os.path.dirname(__file__), "distributed.py")]
    cmd += ["--vs-threads", f"--repeats={args.dist_rounds}", "--steps=8", "--warmup=2"]
    run = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return {k: float(v) for k, v in json.loads(run.stdout.strip().splitlines()[-1]).items()}


def show(result: dict[str, float], keys: str) -> None:
    print({k: round(v, 3) for k, v in result.items() if k.startswith(keys)}, flush=True)


def main() -> None:
    from recis.ops.cores import usable_cores

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--steps", type=int, default=2, help="training steps per run")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    p.add_argument("--capacity", type=int, default=100_000)
    p.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    p.add_argument("--threads", default="1,all", help="thread counts; 'all': usable cores")
    p.add_argument("--memory-rows", type=int, default=1_000_000)
    p.add_argument("--cliff-sizes", default="943000,944000", help="rows around 2^20 * 0.9")
    p.add_argument(
        "--skip",
        default="",
        help="comma list of: steps,map_ahead,busy,mapper,mch,memory,distributed",
    )
    p.add_argument("--mapper-threads", default="all", help="threads of the mapper part")
    p.add_argument(
        "--dist-rounds", type=int, default=5, help="alternating rounds of distributed_vs_threads"
    )
    args = p.parse_args()
    skip = set(args.skip.split(","))
    cores = usable_cores()
    result: dict[str, float] = {"usable_cores": cores, "load_start": load()}
    t0 = time.perf_counter()
    for t in args.threads.split(","):
        n = cores if t == "all" else int(t)
        tag = "all" if t == "all" else f"{n}t"
        torch.set_num_threads(n)
        for opt in [o for o in args.optimizers.split(",") if "steps" not in skip]:
            result.update(bench_steps(opt, tag, args))
            show(
                result,
                f"vs_torchrec_{SHORT[opt]}_{tag}" if opt != "adam" else f"vs_sparseadam_{tag}",
            )
            gc.collect()
        if "map_ahead" not in skip:
            result.update(bench_map_ahead(tag, args))
            show(result, f"map_ahead_{tag}")
            gc.collect()
    torch.set_num_threads(cores)
    if "busy" not in skip:
        result.update(bench_busy(args, os.sched_getaffinity(0)))
        show(result, "busy_slowdown")
    if "mapper" not in skip:
        mt = cores if args.mapper_threads == "all" else int(args.mapper_threads)
        torch.set_num_threads(mt)
        result["mapper_threads"] = mt
        result.update(bench_mapper(args))
        torch.set_num_threads(cores)
        show(result, "mapper_")
    if "mch" not in skip:
        result.update(bench_mch(args))
        show(result, "mapper_vs_mch")
    if "memory" not in skip:
        sizes = [int(s) for s in args.cliff_sizes.split(",") if s]
        result.update(bench_memory(args.memory_rows, sizes))
        show(result, "memory_")
    if "distributed" not in skip:
        result.update(bench_distributed(args))
        show(result, "distributed_")
    result["load_end"] = load()
    result["seconds"] = time.perf_counter() - t0
    print(json.dumps({k: round(v, 3) for k, v in result.items()}))


if __name__ == "__main__":
    main()
