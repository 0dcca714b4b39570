"""Mapping ahead (recis.ops.map_ahead): the next batch's ids looked up read-only in the
background while this batch trains, with results bit for bit those of mapping without it."""

from __future__ import annotations

import copy
import multiprocessing as mp

import numpy as np
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recis.config import SparseOptimizerConfig, TableConfig, TrainConfig
from recis.embedding import HashedEmbeddingCollection, build_embedding_collection
from recis.features import SparseFeature
from recis.io import ParquetReader
from recis.ops.cores import usable_cores
from recis.ops.id_mapper import IdMapper, map_many
from recis.ops.map_ahead import Probe, probe_many
from recis.train import Trainer
from recis.train.pipeline import wants_map_ahead

pytestmark = pytest.mark.skipif(
    not IdMapper(8).native, reason="mapping ahead needs the native IdMapper kernels"
)


def _zipf(rng: np.random.Generator, n: int) -> torch.Tensor:
    return torch.from_numpy(rng.zipf(1.3, n).astype(np.int64))


def _same_state(a: IdMapper, b: IdMapper) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        torch.equal(v, sb[k]) if isinstance(v, torch.Tensor) else v == sb[k] for k, v in sa.items()
    )


@pytest.mark.parametrize("kind", ["lru", "lfu", "grow"])
def test_probed_mapping_equals_plain_mapping(kind) -> None:
    """Full tables (eviction) and growing ones: the same rows, fresh rows and state."""

    def mappers() -> list[IdMapper]:
        if kind == "grow":
            return [IdMapper(500, growable=True) for _ in range(3)]
        return [IdMapper(2000, eviction=kind) for _ in range(3)]

    plain, probed = mappers(), mappers()
    rng = np.random.default_rng(0)
    hinted = 0
    for step in range(1, 30):
        ids = [_zipf(rng, 1500) for _ in range(3)]
        ahead = probe_many(probed, ids)
        assert ahead is not None
        hinted += sum(int((r >= 0).sum()) for r in ahead.rows)
        for a, b in zip(
            map_many(plain, ids, step), map_many(probed, ids, step, hints=ahead.hints(probed))
        ):
            assert torch.equal(a.rows, b.rows)
            assert np.array_equal(a.fresh_rows, b.fresh_rows)
            assert np.array_equal(a.reset_rows, b.reset_rows) and a.capacity == b.capacity
    assert hinted > 20_000  # most ids of a Zipf stream were found ahead
    assert all(_same_state(a, b) for a, b in zip(plain, probed))
    if kind != "grow":
        assert plain[0].size == 2000  # the tables filled up and evicted


def test_a_probe_of_a_changed_mapper_is_not_used() -> None:
    """The version guards the hints: a probe taken before a change is ignored, and the guard
    is what ignores it (a wrong probe with the current version is used: the test can fail)."""
    m, twin = IdMapper(1000), IdMapper(1000)
    ids = torch.arange(100, dtype=torch.int64)
    for x in (m, twin):
        x.map(ids, 1)
    stale = probe_many([m], [ids])
    assert stale is not None and np.array_equal(stale.rows[0], np.arange(100))
    more = torch.arange(100, 200, dtype=torch.int64)
    for x in (m, twin):
        x.map(more, 2)  # changes the table: the probe is stale
    wrong = Probe([np.full(200, 7, np.int64)], stale.versions)
    got = map_many([m], [torch.arange(200)], 3, hints=wrong.hints([m]))[0]
    assert torch.equal(got.rows, map_many([twin], [torch.arange(200)], 3)[0].rows)
    forged = Probe([np.full(200, 7, np.int64)], [m.version])
    assert torch.equal(
        map_many([m], [torch.arange(200)], 4, hints=forged.hints([m]))[0].rows,
        torch.full((200,), 7),
    )


def _kjt(rng: np.random.Generator, b: int = 128) -> KeyedJaggedTensor:
    return KeyedJaggedTensor(
        keys=["a", "b", "c"],
        values=torch.cat([_zipf(rng, 4 * b) for _ in range(3)]),
        lengths=torch.full((3 * b,), 4, dtype=torch.int64),
    )


def _collection(ahead: bool, device: str = "cpu") -> HashedEmbeddingCollection:
    tables = [
        TableConfig(name="ta", dim=8, capacity=1500, eviction="lru"),
        TableConfig(name="tb", dim=8, capacity=1500, eviction="lfu"),
    ]
    feats = [
        SparseFeature("a", table="ta"),
        SparseFeature("b", table="tb"),
        SparseFeature("c", table="ta"),
    ]
    ec = build_embedding_collection(tables, feats, device, SparseOptimizerConfig(lr=0.05))
    assert isinstance(ec, HashedEmbeddingCollection)
    ec.map_ahead = ahead
    return ec.train()


def _state(ec: HashedEmbeddingCollection) -> dict:
    st = {k: v.clone() for k, v in ec.state_dict().items() if isinstance(v, torch.Tensor)}
    return {**st, **{f"{t}.{k}": v for t in ec.mappers for k, v in ec.live_rows(t).items()}}


def test_a_collection_mapping_ahead_trains_bit_for_bit_as_one_that_does_not() -> None:
    """Evaluations, a checkpoint restored and a batch other than the one named ahead, all
    between steps: the weights, optimizer state and mappers stay equal at every step."""
    torch.manual_seed(0)
    plain, ahead = _collection(False), _collection(True)
    assert not plain.sends_ahead and ahead.sends_ahead
    rng = np.random.default_rng(1)
    batches = [_kjt(rng) for _ in range(24)]
    stranger = _kjt(rng)
    saved = None
    for i, kjt in enumerate(batches):
        nxt = batches[i + 1] if i + 1 < len(batches) else None
        if nxt is not None:
            assert ahead.prefetch(nxt) and not plain.prefetch(nxt)
        if i == 17:  # a training lookup of another batch than the one named: mapped plainly
            for ec in (plain, ahead):
                ec(stranger).values().sum().backward()
        for ec in (plain, ahead):
            ec(kjt).values().square().sum().backward()
        if i % 5 == 2:  # an evaluation between steps reads the mappers, changes nothing
            for ec in (plain, ahead):
                ec.eval()
                ec(batches[(3 * i) % 24])
                ec.train()
        if i == 8:
            saved = copy.deepcopy(ahead.state_dict())
        if i == 12:  # restore step 8's checkpoint into both (the probe in flight is dropped)
            for ec in (plain, ahead):
                ec.load_state_dict(saved)
        a, b = _state(plain), _state(ahead)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), i
    # every step's probe was used but after the restore (batch 13) and around the stranger:
    # its lookup took batch 17's probe (other ids: unused) and started 18's, which batch 17's
    # lookup then took (unused); 18 had nothing ahead
    assert ahead.prefetched_lookups == 23 - 3
    assert plain.prefetched_lookups == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_mapping_ahead_on_cuda_gives_the_same_rows_and_weights() -> None:
    """On a GPU the batches live on the device; the probe copies the next batch's ids to
    the host. The mappers end bit for bit equal, the weights equal to fp32 rounding."""
    torch.manual_seed(0)
    plain, ahead = _collection(False, "cuda"), _collection(True, "cuda")
    rng = np.random.default_rng(4)
    batches = [_kjt(rng).to(torch.device("cuda")) for _ in range(12)]
    for i, kjt in enumerate(batches):
        if i + 1 < len(batches):
            ahead.prefetch(batches[i + 1])
        for ec in (plain, ahead):
            ec(kjt).values().square().sum().backward()
    for t in plain.mappers:
        a, b = plain.live_rows(t), ahead.live_rows(t)
        assert torch.equal(a["ids"], b["ids"]) and torch.equal(a["last"], b["last"])
        assert torch.allclose(a["weights"], b["weights"], atol=1e-6)
    assert ahead.prefetched_lookups == 11


def test_the_trainer_maps_ahead_exactly(small_ctr, tmp_path) -> None:
    """``train.map_ahead: on`` against ``off``: the same model after steps with evaluation
    and checkpoints between them, and every step but the first of each epoch mapped ahead."""
    from recis.features import LabelSpec, Schema
    from recis.models import DLRM, DLRMConfig
    from recis.synthetic import sparse_names

    path, _ = small_ctr
    schema = Schema(
        sparse=[SparseFeature(n) for n in sparse_names()[:4]],
        labels=[LabelSpec("click", column="label")],
    )
    models = {}
    for mode in ("off", "on"):
        torch.manual_seed(0)
        cfg = DLRMConfig(
            tables=[
                TableConfig(name=f.name, dim=4, capacity=3000, eviction="lru")
                for f in schema.sparse
            ],
            bottom_mlp=[4],
            top_mlp=[8],
        )
        model = DLRM(cfg, schema, torch.device("cpu"))
        train = ParquetReader(path / "train", schema, 1024, shuffle=True, seed=3)
        tc = TrainConfig(
            epochs=2,
            max_steps=24,
            progress=False,
            tensorboard=False,
            eval_every=7,
            eval_batches=1,
            checkpoint_every=10,
            map_ahead=mode,
        )
        Trainer(
            model, train, ParquetReader(path / "eval", schema, 2048), tc, run_dir=tmp_path / mode
        ).fit()
        models[mode] = model
    a, b = models["off"].state_dict(), models["on"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))
    assert models["off"].sparse_arch.prefetched_lookups == 0
    assert models["on"].sparse_arch.prefetched_lookups == 24 - 2  # 20 batches an epoch


def test_auto_maps_ahead_when_a_core_is_free(monkeypatch) -> None:
    for key in ("LOCAL_WORLD_SIZE", "HOROVOD_LOCAL_SIZE"):
        monkeypatch.delenv(key, raising=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(usable_cores())
        assert not wants_map_ahead("auto", torch.device("cpu"))
        assert wants_map_ahead("on", torch.device("cpu"))
        assert wants_map_ahead("auto", torch.device("cuda"))  # the host idles during the step
        assert not wants_map_ahead("off", torch.device("cuda"))
        if usable_cores() > 1:
            torch.set_num_threads(1)
            assert wants_map_ahead("auto", torch.device("cpu"))
            # the run's other processes on this node have the other cores (torchrun)
            monkeypatch.setenv("LOCAL_WORLD_SIZE", str(usable_cores()))
            assert not wants_map_ahead("auto", torch.device("cpu"))
            monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
            assert wants_map_ahead("auto", torch.device("cpu"))
    finally:
        torch.set_num_threads(before)


def _child(queue) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(2)
    ec = _collection(True)
    batches = [_kjt(rng) for _ in range(4)]
    for i, kjt in enumerate(batches):
        if i + 1 < len(batches):
            ec.prefetch(batches[i + 1])
        ec(kjt).values().sum().backward()
    queue.put(ec.prefetched_lookups)


def test_a_forked_child_maps_ahead_on_its_own_thread() -> None:
    """The parent's probe thread does not exist in a forked child: it makes its own."""
    parent = _collection(True)
    rng = np.random.default_rng(3)
    first, second = _kjt(rng), _kjt(rng)
    parent.prefetch(second)
    parent(first)  # the parent's probe thread now exists (and has run)
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue,))
    proc.start()
    got = queue.get(timeout=60)
    proc.join(60)
    assert proc.exitcode == 0 and got == 3
    parent(second)
    assert parent.prefetched_lookups == 1
