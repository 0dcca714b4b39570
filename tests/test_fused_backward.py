"""recis's fused CPU backward (ops/csrc/fused_backward.cpp) equals fbgemm's: bit for bit for
SGD and Adagrad, to float rounding for row-wise Adagrad (fbgemm's JIT kernel vectorises the
row's sum of squares)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType, SparseType
from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
    ComputeDevice,
    SplitTableBatchedEmbeddingBagsCodegen,
)

from recis.config import SparseOptimizerConfig, TableConfig
from recis.embedding import build_embedding_collection
from recis.features import SparseFeature
from recis.ops.fused_backward import FusedCpuLookup, fused_lookup, native_backward, supports

pytestmark = pytest.mark.skipif(native_backward() is None, reason="kernel not built here")

ROWS = (7, 13)  # table 0 is shared by features 0 and 1, table 1 serves feature 2
FTM = (0, 0, 1)


def _tbe(opt: EmbOptimType, pooling: PoolingMode, prec: SparseType, wd: float = 0.0):
    dims = (8, 8) if pooling == PoolingMode.NONE else (8, 16)
    return SplitTableBatchedEmbeddingBagsCodegen(
        [(r, d, EmbeddingLocation.HOST, ComputeDevice.CPU) for r, d in zip(ROWS, dims)],
        feature_table_map=list(FTM),
        optimizer=opt,
        pooling_mode=pooling,
        weights_precision=prec,
        output_dtype=SparseType.FP32,
        learning_rate=0.3,
        eps=1e-3,
        weight_decay=wd,
    )


def _batch(gen: torch.Generator, b: int, max_len: int, empty: bool):
    """Feature-major ids with many repeats (rows drawn from a handful)."""
    n_feat = len(FTM)
    lens = torch.randint(0, max_len + 1, (n_feat * b,), generator=gen)
    if empty:
        lens.zero_()
    ids = [
        torch.randint(0, ROWS[FTM[f]], (int(lens[f * b : (f + 1) * b].sum()),), generator=gen)
        for f in range(n_feat)
    ]
    offsets = torch.zeros(n_feat * b + 1, dtype=torch.int64)
    offsets[1:] = lens.cumsum(0)
    return torch.cat(ids), offsets


OPTS = [EmbOptimType.EXACT_SGD, EmbOptimType.EXACT_ADAGRAD, EmbOptimType.EXACT_ROWWISE_ADAGRAD]


@pytest.mark.parametrize("opt", OPTS)
@pytest.mark.parametrize("pooling", [PoolingMode.SUM, PoolingMode.MEAN, PoolingMode.NONE])
@pytest.mark.parametrize("prec", [SparseType.FP32, SparseType.FP16])
def test_equals_fbgemm_backward(opt, pooling, prec) -> None:
    gen = torch.Generator().manual_seed(0)
    ref = _tbe(opt, pooling, prec)
    mine = copy.deepcopy(ref)
    assert supports(mine)
    if opt == EmbOptimType.EXACT_ROWWISE_ADAGRAD:  # float rounding (fp16: half an fp16 ulp)
        tol = (
            {"rtol": 1e-5, "atol": 1e-6}
            if prec == SparseType.FP32
            else {"rtol": 1e-3, "atol": 1e-3}
        )

        def same(a: torch.Tensor, b: torch.Tensor, step: int) -> None:
            torch.testing.assert_close(a.float(), b.float(), **tol, msg=f"step {step}")
    else:

        def same(a: torch.Tensor, b: torch.Tensor, step: int) -> None:
            assert torch.equal(a, b), step

    changed = False
    # weighted and unweighted steps, an all-empty batch, duplicates inside bags
    for step, (weighted, empty) in enumerate(
        [(False, False), (True, False), (False, True), (True, False), (False, False)]
    ):
        ids, offsets = _batch(gen, b=5, max_len=4, empty=empty)
        psw = torch.rand(ids.numel(), generator=gen) if weighted else None
        before = ref.weights_host.detach().clone()
        out_ref = ref(ids.clone(), offsets.clone(), per_sample_weights=psw)
        out = fused_lookup(mine, ids.clone(), offsets.clone(), psw)
        assert out.grad_fn is not None and "FusedCpuLookup" in type(out.grad_fn).__name__
        same(out, out_ref, step)
        g = torch.randn(out.shape, generator=gen)
        (out_ref * g).sum().backward()
        (out * g).sum().backward()
        same(mine.weights_host, ref.weights_host, step)
        if opt != EmbOptimType.EXACT_SGD:
            assert mine.momentum1_host.shape == ref.momentum1_host.shape
            same(mine.momentum1_host, ref.momentum1_host, step)
        changed |= not torch.equal(before, ref.weights_host)
    assert changed  # the comparison saw real updates


def test_fallbacks_keep_fbgemm() -> None:
    # a TBE with its own weight decay keeps fbgemm's backward (the kernel applies none)
    assert not supports(_tbe(EmbOptimType.EXACT_ADAGRAD, PoolingMode.SUM, SparseType.FP32, 0.1))
    tbe = _tbe(EmbOptimType.EXACT_ROWWISE_ADAGRAD, PoolingMode.SUM, SparseType.FP32, 0.1)
    assert not supports(tbe)
    ids, offsets = _batch(torch.Generator().manual_seed(1), b=3, max_len=2, empty=False)
    assert "FusedCpuLookup" not in type(fused_lookup(tbe, ids, offsets).grad_fn).__name__
    with torch.no_grad():  # eval: no autograd node at all
        assert fused_lookup(_tbe(EmbOptimType.EXACT_SGD, PoolingMode.SUM, SparseType.FP32), ids, offsets).grad_fn is None  # fmt: skip


def test_out_of_range_row_raises() -> None:
    tbe = _tbe(EmbOptimType.EXACT_SGD, PoolingMode.SUM, SparseType.FP32)
    ids = torch.tensor([0, 1, 2], dtype=torch.int64)
    offsets = torch.tensor([0, 1, 2, 3], dtype=torch.int64)
    out = FusedCpuLookup.apply(tbe.placeholder_autograd_tensor, tbe, ids, offsets, None)
    ids[2] = 99  # table 1 has 13 rows
    with pytest.raises(RuntimeError, match="out of range"):
        out.sum().backward()


def test_collection_uses_it_and_matches_fbgemm_path(monkeypatch) -> None:
    """The hashed collection on CPU: Adagrad groups take the fused backward, same numbers."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    import recis.ops.fused_backward as fb

    tables = [
        TableConfig(name="a", dim=4, capacity=8),
        TableConfig(name="b", dim=8, capacity=8, pooling="mean"),
    ]
    feats = [SparseFeature("f1", table="a"), SparseFeature("f2", table="a")]
    feats.append(SparseFeature("f3", table="b"))
    opt = SparseOptimizerConfig(name="adagrad", lr=0.1)
    torch.manual_seed(0)
    fast = build_embedding_collection(tables, feats, "cpu", opt)
    torch.manual_seed(0)
    slow = build_embedding_collection(tables, feats, "cpu", opt)
    x = KeyedJaggedTensor(
        keys=["f1", "f2", "f3"],
        values=torch.tensor([5, 5, 2**60, -1, 5, 3, 3, 3]),
        lengths=torch.tensor([2, 1, 1, 0, 1, 3]),
    )
    g0, j0 = fast.where["a"]
    init = fast.groups[g0].weight(j0).clone()
    calls = []
    apply = fb.FusedCpuLookup.apply
    monkeypatch.setattr(fb.FusedCpuLookup, "apply", lambda *a: calls.append(1) or apply(*a))
    for step in range(3):
        fast(x).values().pow(2).sum().backward()
        assert len(calls) == 2 * (step + 1)  # one call per group (sum, mean)
        with monkeypatch.context() as m:
            m.setattr("recis.embedding.groups.fused_lookup", lambda t, i, o, w=None: t(i, o, w))
            slow(x).values().pow(2).sum().backward()
        assert len(calls) == 2 * (step + 1)
    assert not torch.equal(fast.groups[g0].weight(j0), init)
    for key in fast.where:
        g, j = fast.where[key]
        assert torch.equal(fast.groups[g].weight(j), slow.groups[g].weight(j))
        for s_fast, s_slow in zip(fast.groups[g].states(j), slow.groups[g].states(j)):
            assert torch.equal(s_fast, s_slow)


def test_native_per_id_init_equals_numpy() -> None:
    """``initial_for_ids`` (uniform) through the C++ loop equals the numpy formula."""
    import numpy as np

    from recis.embedding.groups import TableSlot
    from recis.ops.hashing import id_uniform
    from recis.ops.id_mapper_probe import native_kernels

    if native_kernels() is None:
        pytest.skip("native kernels not built here")
    slot = TableSlot(name="t", dim=12, rows=10, init="uniform", init_scale=0.05)
    ids = np.array([0, -1, 2**62, -(2**63), 7, 7], dtype=np.int64)
    got = slot.initial_for_ids(ids, "3/t", torch.device("cpu"))
    want = ((2.0 * id_uniform(ids, 12, "3/t") - 1.0) * 0.05).astype(np.float32)
    assert torch.equal(got, torch.from_numpy(want))
    assert torch.equal(got[4], got[5]) and not torch.equal(got[0], got[1])


def _step_weights(coll, x) -> list[torch.Tensor]:
    coll(x).values().pow(2).sum().backward()
    return [coll.groups[g].weight(j).clone() for g, j in coll.where.values()]


def _child_step(coll, x, queue) -> None:  # runs in a forked child
    queue.put([w.numpy() for w in _step_weights(coll, x)])


def _collection(names: list[str], opt: str, **table: Any):  # type: ignore[no-untyped-def]
    """A hashed collection of dim-8 tables ``names``, feature ``f<name>`` each."""
    tables = [TableConfig(name=n, dim=8, **table) for n in names]
    feats = [SparseFeature(f"f{n}", table=n) for n in names]
    return build_embedding_collection(tables, feats, "cpu", SparseOptimizerConfig(name=opt, lr=0.1))


@pytest.fixture
def two_threads() -> Iterator[None]:
    """torch (and so the native ops' pool) at 2 threads: the pool has a helper."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def test_forked_child_runs_the_native_ops(two_threads: None) -> None:
    """The native ops' thread pool (ops/csrc/task_pool.h) is the parent's until a fork: a
    forked child (a reader worker) gets its own and computes the same step as the parent."""
    import multiprocessing

    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    coll = _collection(["a", "b", "c"], "adagrad", capacity=64)
    x = KeyedJaggedTensor(
        keys=["fa", "fb", "fc"],
        values=torch.arange(30) % 11 * 2**40,
        lengths=torch.tensor([3, 2, 5, 4, 1, 5, 2, 3, 5]),
    )
    _step_weights(coll, x)  # the pool's helper started in the parent
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_step, args=(coll, x, queue))
    proc.start()
    got = queue.get(timeout=120)
    proc.join(timeout=60)
    assert proc.exitcode == 0
    want = _step_weights(coll, x)  # the parent's pool still works after the fork
    assert len(got) == len(want) == 3
    for g, w in zip(got, want):
        assert torch.equal(torch.from_numpy(g), w)


def test_concurrent_callers_share_the_pool(two_threads: None) -> None:
    """Two Python threads training their own collections at once: one takes the native ops'
    pool, the other runs its tasks on its own thread (ops/csrc/task_pool.h); both end with
    the weights a collection trained alone ends with."""
    import threading

    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    names = [f"t{i}" for i in range(6)]
    gen = torch.Generator().manual_seed(3)
    batches = [
        KeyedJaggedTensor(
            keys=[f"f{n}" for n in names],
            values=torch.randint(0, 2**40, (6 * 16 * 4,), generator=gen),
            lengths=torch.full((6 * 16,), 4),
        )
        for _ in range(20)
    ]

    def train(out: list) -> None:  # type: ignore[type-arg]
        coll = _collection(names, "rowwise_adagrad", capacity=256, eviction="lru")
        for x in batches:
            last = _step_weights(coll, x)
        out.extend(last)

    alone: list[torch.Tensor] = []
    train(alone)
    got: list[list[torch.Tensor]] = [[], []]
    workers = [threading.Thread(target=train, args=(got[i],)) for i in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    for result in got:
        assert len(result) == len(alone) == 6
        for a, b in zip(result, alone):
            assert torch.equal(a, b)
