"""The sharded hashed engine in one process (W = 1): same outputs, updates, admission and
eviction as HashedEmbeddingCollection; state round trip. Multi-rank runs are in
tests/test_hashed_dist.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recis.config import SparseOptimizerConfig, TableConfig
from recis.distributed.hashed import ShardedHashedEmbeddingCollection, owner_of
from recis.embedding import HashedEmbeddingCollection
from recis.errors import EmbeddingError
from recis.features import SparseFeature

B = 6
TABLES = [
    TableConfig(name="a", dim=8, capacity=200),
    TableConfig(name="b", dim=16, capacity=200, pooling="mean"),
    TableConfig(name="s", dim=8, capacity=200, pooling="none"),
    # small, with admission and LRU eviction: exercises counts and victims
    TableConfig(name="c", dim=8, capacity=12, eviction="lru", admission_min_count=2),
]
FEATURES = [
    SparseFeature(name="fa", table="a"),
    SparseFeature(name="fa2", table="a"),  # shares table a
    SparseFeature(name="fb", table="b", weight_column="wb"),
    SparseFeature(name="fs", table="s"),
    SparseFeature(name="fc", table="c"),
]
KEYS = [f.name for f in FEATURES]


def batch(step: int) -> KeyedJaggedTensor:
    g = torch.Generator().manual_seed(step)
    lengths = torch.randint(0, 4, (len(KEYS) * B,), generator=g)
    n = int(lengths.sum())
    # few distinct ids (repeats within and across features), some negative / huge
    ids = torch.randint(0, 30, (n,), generator=g) * (2**40 + 7) - 2**44
    return KeyedJaggedTensor(
        keys=KEYS, values=ids, lengths=lengths, weights=torch.rand(n, generator=g) + 0.5
    )


def collection(optimizer: str = "adagrad") -> HashedEmbeddingCollection:
    opt = SparseOptimizerConfig(name=optimizer, lr=0.1)
    return HashedEmbeddingCollection(TABLES, FEATURES, "cpu", optimizer=opt, seed=5)


def step_outputs(module, kjt: KeyedJaggedTensor) -> torch.Tensor:
    """Forward, a fixed linear loss, backward (fused update); returns the outputs."""
    kt, seqs = module.lookup(kjt)
    out = torch.cat([kt.values().flatten(), seqs["fs"].values().flatten()])
    weights = torch.linspace(-1, 1, out.numel())
    (out * weights).sum().backward()
    return out.detach()


@pytest.mark.parametrize("optimizer", ["adagrad", "rowwise_adagrad", "adam"])
def test_one_rank_matches_the_collection(optimizer):
    plain = collection(optimizer)
    sharded = ShardedHashedEmbeddingCollection(collection(optimizer), exchange=True)
    for step in range(6):
        kjt = batch(step)
        np.testing.assert_allclose(step_outputs(sharded, kjt), step_outputs(plain, kjt), atol=1e-6)
    for t in ("a", "b", "c"):
        ids, rows = plain.mappers[t].items()
        g, j = plain.where[t]
        want = plain.groups[g].weight(j)[torch.from_numpy(rows + 1)]
        got_ids, got = sharded.gather_rows(t)
        order = np.argsort(ids)
        assert got_ids.tolist() == ids[order].tolist()  # same ids admitted, same evicted
        np.testing.assert_allclose(got, want[torch.from_numpy(order)].detach(), atol=1e-6)
    assert plain.mappers["c"].size == 12  # full: eviction happened


@pytest.mark.parametrize("exchange", [True, False])
def test_state_round_trip_gives_identical_next_steps(exchange):
    a = ShardedHashedEmbeddingCollection(collection(), exchange=exchange)
    for step in range(4):
        step_outputs(a, batch(step))
    state = a.state_dict()
    assert state["step"].item() == 4 and state["rows.c.last"].dtype == torch.int32
    b = ShardedHashedEmbeddingCollection(collection(), exchange=not exchange)
    b.load_state_dict(state)
    for step in range(4, 7):
        kjt = batch(step)
        np.testing.assert_allclose(step_outputs(b, kjt), step_outputs(a, kjt), atol=1e-6)


def test_export_matches_the_collection(tmp_path):
    from safetensors.torch import load_file

    plain = collection()
    sharded = ShardedHashedEmbeddingCollection(collection(), exchange=True)
    for step in range(3):
        step_outputs(plain, batch(step))
        step_outputs(sharded, batch(step))
    plain.export_embeddings(tmp_path / "plain.safetensors")
    sharded.export_embeddings(tmp_path / "sharded.safetensors")
    a, b = load_file(tmp_path / "plain.safetensors"), load_file(tmp_path / "sharded.safetensors")
    assert sorted(a) == sorted(b) and len(b["c.ids"]) > 0
    for t in ("a", "b", "c", "s"):
        order = a[f"{t}.ids"].argsort()
        assert torch.equal(a[f"{t}.ids"][order], b[f"{t}.ids"])
        torch.testing.assert_close(a[f"{t}.weights"][order], b[f"{t}.weights"], atol=1e-6, rtol=0)


def test_owner_of_spreads_sequential_ids_evenly():
    owners = owner_of(torch.arange(40_000), 4)
    counts = torch.bincount(owners, minlength=4)
    assert counts.min() > 9_500 and counts.max() < 10_500
    assert torch.equal(owner_of(torch.arange(-5, 5), 3), owner_of(torch.arange(-5, 5), 3))
    assert owner_of(torch.tensor([2**63 - 1, -(2**63)]), 2).tolist() in (
        [0, 1],
        [1, 0],
        [0, 0],
        [1, 1],
    )


def test_empty_batch_and_float_ids():
    sharded = ShardedHashedEmbeddingCollection(collection(), exchange=True)
    lengths = torch.zeros(len(KEYS) * B, dtype=torch.int64)
    empty = KeyedJaggedTensor(
        keys=KEYS, values=torch.zeros(0, dtype=torch.int64), lengths=lengths, weights=torch.zeros(0)
    )
    kt, seqs = sharded.lookup(empty)
    assert kt.values().shape == (B, 40) and not kt.values().any()
    assert seqs["fs"].values().shape == (0, 8)
    lengths[0] = 2
    floats = KeyedJaggedTensor(keys=KEYS, values=torch.rand(2), lengths=lengths)
    with pytest.raises(EmbeddingError, match="integers"):
        sharded.lookup(floats)


def test_deferred_template_shards_like_a_full_collection():
    """Under deferred_tables the source holds 2 rows per table; the shard built from it
    (full capacity) trains exactly like one built from a full collection."""
    from recis.embedding import deferred_tables

    with deferred_tables():
        template = collection()
    g, j = template.where["a"]
    assert template.groups[g].weight(j).shape[0] == 2
    a = ShardedHashedEmbeddingCollection(template, exchange=True)
    b = ShardedHashedEmbeddingCollection(collection(), exchange=True)
    assert a.local.mappers["a"].capacity == 200
    for step in range(3):
        kjt = batch(step)
        torch.testing.assert_close(step_outputs(a, kjt), step_outputs(b, kjt), atol=0, rtol=0)


def test_dense_init_does_not_depend_on_table_sizes():
    """Hashed rows take no draws from the global RNG: the dense layers a seed gives are the
    same for any capacity and for a deferred template (how 1 and N ranks build a model)."""
    from recis.embedding import deferred_tables
    from recis.features import Schema
    from recis.models.dlrm import DLRM, DLRMConfig

    schema = Schema(
        dense=[{"name": "I0"}],
        sparse=[{"name": "C0"}],
        labels=[{"name": "click", "column": "label"}],
    )

    def dense_state(capacity: int, deferred: bool) -> dict:
        cfg = DLRMConfig(
            tables=[TableConfig(name="C0", dim=8, capacity=capacity)], bottom_mlp=[8], top_mlp=[4]
        )
        torch.manual_seed(0)
        if deferred:
            with deferred_tables():
                model = DLRM(cfg, schema, torch.device("cpu"))
        else:
            model = DLRM(cfg, schema, torch.device("cpu"))
        return {k: v for k, v in model.state_dict().items() if "_arch." in k and "sparse" not in k}

    ref = dense_state(100, False)
    assert ref
    for other in (dense_state(5000, False), dense_state(100, True)):
        for k in ref:
            assert torch.equal(ref[k], other[k]), k
