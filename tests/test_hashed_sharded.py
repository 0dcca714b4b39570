"""The sharded hashed engine in one process (W = 1): same outputs, updates, admission and
eviction as HashedEmbeddingCollection, for tables split by id, kept whole and both;
state round trip; where tables go. Multi-rank runs are in tests/test_hashed_dist.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recis.config import SparseOptimizerConfig, TableConfig
from recis.distributed.hashed import ShardedHashedEmbeddingCollection, owner_of, place_tables
from recis.embedding import HashedEmbeddingCollection
from recis.errors import ConfigError, EmbeddingError
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
# where the tables go (one process: rank 0): split by id, whole (table-wise), both
LAYOUTS = {
    "split": {},
    "whole": {t.name: 0 for t in TABLES},
    "mixed": {"a": 0, "s": 0},  # a (two features) and the sequence table whole
}


def batch(step: int, b: int = B) -> KeyedJaggedTensor:
    g = torch.Generator().manual_seed(step)
    lengths = torch.randint(0, 4, (len(KEYS) * b,), generator=g)
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


@pytest.mark.parametrize(
    "optimizer,layout",
    [("adagrad", "split"), ("rowwise_adagrad", "split"), ("adam", "split")]
    + [("sgd", "whole"), ("adam", "whole"), ("rowwise_adagrad", "mixed")],
)
def test_one_rank_matches_the_collection(optimizer, layout):
    plain = collection(optimizer)
    sharded = ShardedHashedEmbeddingCollection(
        collection(optimizer), exchange=True, placement=LAYOUTS[layout]
    )
    assert (sharded.whole is None) == (layout == "split")
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


def test_prefetched_ids_give_the_same_steps():
    """The next batch's ids sent ahead (:meth:`prefetch`) change nothing: the same outputs
    and rows as the plain collection, also when another batch is looked up in between
    (eval) and when a batch sent ahead is never looked up."""
    plain = collection("sgd")
    sharded = ShardedHashedEmbeddingCollection(
        collection("sgd"), exchange=True, placement=LAYOUTS["mixed"]
    )
    batches = [batch(step) for step in range(7)]
    for step in range(6):
        kjt = batches[step]
        if step == 2:  # prefetched, then replaced by another before any lookup
            assert sharded.prefetch(batch(50))
        assert sharded.prefetch(batches[step + 1])
        if step == 3:  # a lookup of another batch (no step counted) meanwhile
            with torch.no_grad():
                sharded.eval(), plain.eval()
                other = batch(60)
                a, b = sharded.lookup(other)[0].values(), plain.lookup(other)[0].values()
                np.testing.assert_allclose(a, b, atol=1e-6)
                sharded.train(), plain.train()
        np.testing.assert_allclose(step_outputs(sharded, kjt), step_outputs(plain, kjt), atol=1e-6)
    # steps 1 and 3-5 took the ids sent ahead for them; at step 2 they had been dropped
    # (three batches ahead: the oldest goes), step 0 had none
    assert sharded.prefetched_lookups == 4
    for t in ("a", "b", "c"):
        ids, rows = plain.mappers[t].items()
        got_ids, _ = sharded.gather_rows(t)
        assert sorted(got_ids.tolist()) == sorted(ids.tolist())
    # nothing to send ahead: tables all split by id, or a feature missing
    split = ShardedHashedEmbeddingCollection(collection("sgd"), exchange=True)
    assert not split.prefetch(batches[0])
    partial = KeyedJaggedTensor(keys=["fa"], values=torch.tensor([1]), lengths=torch.tensor([1]))
    assert not sharded.prefetch(partial)


@pytest.mark.parametrize(
    "exchange,saved,loaded", [(True, "split", "whole"), (False, "split", "mixed")]
)
def test_state_round_trip_gives_identical_next_steps(exchange, saved, loaded):
    """Saved with one layout, loaded into another: the next steps are the same."""
    a = ShardedHashedEmbeddingCollection(collection(), exchange=exchange, placement=LAYOUTS[saved])
    for step in range(4):
        step_outputs(a, batch(step))
    state = a.state_dict()
    assert state["step"].item() == 4 and state["rows.c.last"].dtype == torch.int32
    b = ShardedHashedEmbeddingCollection(
        collection(), exchange=not exchange, placement=LAYOUTS[loaded]
    )
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


@pytest.mark.parametrize("layout", ["split", "mixed"])
def test_empty_batch_and_float_ids(layout):
    sharded = ShardedHashedEmbeddingCollection(
        collection(), exchange=True, placement=LAYOUTS[layout]
    )
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


def test_template_shards_like_a_full_collection():
    """A template source (``template=True``) holds 2 rows per table; the shard built from
    it (full capacity) trains exactly like one built from a full collection."""
    opt = SparseOptimizerConfig(name="adagrad", lr=0.1)
    template = HashedEmbeddingCollection(
        TABLES, FEATURES, "cpu", optimizer=opt, seed=5, template=True
    )
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
    same for any capacity and for template tables (how 1 and N ranks build a model)."""
    from recis.features import Schema
    from recis.models.dlrm import DLRM, DLRMConfig

    schema = Schema(
        dense=[{"name": "I0"}],
        sparse=[{"name": "C0"}],
        labels=[{"name": "click", "column": "label"}],
    )

    def dense_state(capacity: int, template: bool) -> dict:
        cfg = DLRMConfig(
            tables=[TableConfig(name="C0", dim=8, capacity=capacity)], bottom_mlp=[8], top_mlp=[4]
        )
        torch.manual_seed(0)
        model = DLRM(cfg, schema, torch.device("cpu"), template_tables=template)
        if template:
            assert model.sparse_arch.tables["C0"].capacity == capacity
            assert model.sparse_arch.mappers["C0"].capacity == 1
        return {k: v for k, v in model.state_dict().items() if "_arch." in k and "sparse" not in k}

    ref = dense_state(100, False)
    assert ref
    for other in (dense_state(5000, False), dense_state(100, True)):
        for k in ref:
            assert torch.equal(ref[k], other[k]), k


def test_place_tables_in_contiguous_balanced_runs_and_splits_big_ones():
    same = [TableConfig(name=f"C{i}", dim=16, capacity=1000) for i in range(26)]
    assert place_tables(same, 2) == {f"C{i}": int(i >= 13) for i in range(26)}
    assert sorted(place_tables(same, 4).values()) == [0] * 6 + [1] * 7 + [2] * 6 + [3] * 7
    t = [
        TableConfig(name="big", dim=16, capacity=10_000),
        *(TableConfig(name=f"t{i}", dim=8, capacity=1000 * (i + 1)) for i in range(4)),
    ]
    # auto: big (160k of 240k) is over 1/2 of all -> split by id; the rest in order, by
    # size midpoints (8k, 16k, 24k | 32k)
    assert place_tables(t, 2) == {"t0": 0, "t1": 0, "t2": 0, "t3": 1}
    kinds = {"big": "table_wise", "t1": "row_wise", "t2": "row_wise"}
    assert place_tables(t, 2, kinds) == {"big": 0, "t0": 1, "t3": 1}
    assert place_tables(t, 1) == {}  # one process: nothing to place
    with pytest.raises(ConfigError, match=r"distributed.sharding.t0: 'column_wise'"):
        place_tables(t, 2, {"t0": "column_wise"})


def test_placement_on_a_missing_rank_is_a_config_error():
    with pytest.raises(ConfigError, match="'a' on rank 3"):
        ShardedHashedEmbeddingCollection(collection(), 0, 2, placement={"a": 3})


def test_sharding_config_of_hashed_tables():
    from torch import nn

    from recis.distributed.sharding import table_sharding

    model = nn.Module()
    model.sparse = collection()
    kinds = table_sharding(model, "auto", {"a": "row_wise", "b": "table_wise"})
    assert kinds == {"a": "row_wise", "b": "table_wise", "s": "auto", "c": "auto"}
    with pytest.raises(ConfigError, match=r"distributed.sharding.a: 'column_wise'.*hashed"):
        table_sharding(model, "auto", {"a": "column_wise"})
    with pytest.raises(ConfigError, match=r"default_sharding: 'data_parallel'.*\['b', 's', 'c'\]"):
        table_sharding(model, "data_parallel", {"a": "row_wise"})
    with pytest.raises(ConfigError, match=r"distributed.sharding.zz: no table named 'zz'"):
        table_sharding(model, "auto", {"zz": "row_wise"})
