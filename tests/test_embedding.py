"""HashedEmbeddingCollection against torchrec, and its mapping, state and export."""

from __future__ import annotations

import pytest
import torch
import torchrec.optim as trec_optim
from safetensors.torch import load_file
from torchrec import EmbeddingBagConfig
from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recis.config import SparseOptimizerConfig, TableConfig
from recis.embedding import build_embedding_collection
from recis.errors import ConfigError, EmbeddingError, TableFullError
from recis.features import SparseFeature
from recis.optim.dense import split_parameters

CPU = torch.device("cpu")


def kjt(ids: dict[str, list[list[int]]], weights: dict[str, list[list[float]]] | None = None):
    keys = list(ids)
    vals = [v for k in keys for bag in ids[k] for v in bag]
    lens = [len(bag) for k in keys for bag in ids[k]]
    w = None
    if weights is not None:
        w = torch.tensor([x for k in keys for bag in weights[k] for x in bag])
    return KeyedJaggedTensor(
        keys=keys,
        values=torch.tensor(vals, dtype=torch.int64),
        lengths=torch.tensor(lens),
        weights=w,
    )


BATCHES = [
    {"f1": [[1, 2], [3], []], "f2": [[0], [4, 4, 1], [2]], "f3": [[5], [6, 0], [1]]},
    {"f1": [[2], [2, 7], [1]], "f2": [[3], [], [2, 0]], "f3": [[0], [7], [1, 1]]},
    {"f1": [[5, 6], [0], [7]], "f2": [[1], [1], [1]], "f3": [[2], [3], [4]]},
]


@pytest.mark.parametrize(
    "opt,torch_opt,kwargs",
    [
        ("sgd", torch.optim.SGD, {"lr": 0.1}),
        ("adagrad", torch.optim.Adagrad, {"lr": 0.1, "eps": 1e-8}),
        ("rowwise_adagrad", trec_optim.RowWiseAdagrad, {"lr": 0.1, "eps": 1e-8}),
    ],
)
def test_bypassed_mapper_equals_torchrec_fused_ebc(opt, torch_opt, kwargs) -> None:
    tables = [
        TableConfig(name="a", dim=4, capacity=8, mapper="none"),
        TableConfig(name="b", dim=8, capacity=8, mapper="none", pooling="mean"),
    ]
    feats = [SparseFeature(name="f1", table="a"), SparseFeature(name="f2", table="a")]
    feats.append(SparseFeature(name="f3", table="b"))
    ec = build_embedding_collection(tables, feats, CPU, SparseOptimizerConfig(name=opt, lr=0.1))
    ref = FusedEmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(
                name="a", embedding_dim=4, num_embeddings=8, feature_names=["f1", "f2"]
            ),
        ],
        optimizer_type=torch_opt,
        optimizer_kwargs=kwargs,
    )
    ref_mean = FusedEmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(
                name="b",
                embedding_dim=8,
                num_embeddings=8,
                feature_names=["f3"],
                pooling=__import__("torchrec").PoolingType.MEAN,
            )
        ],
        optimizer_type=torch_opt,
        optimizer_kwargs=kwargs,
    )
    with torch.no_grad():
        ref.state_dict()["embedding_bags.a.weight"].copy_(ec.groups[ec.where["a"][0]].weight(0))
        ref_mean.state_dict()["embedding_bags.b.weight"].copy_(
            ec.groups[ec.where["b"][0]].weight(0)
        )
    gen = torch.Generator().manual_seed(0)
    for batch in BATCHES:
        x = kjt(batch)
        out = ec(x).to_dict()
        want = {**ref(x).to_dict(), **ref_mean(x).to_dict()}
        for k in ("f1", "f2", "f3"):
            torch.testing.assert_close(out[k], want[k])
        g = {k: torch.randn(out[k].shape, generator=gen) for k in out}
        sum((out[k] * g[k]).sum() for k in out).backward()
        sum((want[k] * g[k]).sum() for k in want).backward()
    torch.testing.assert_close(
        ec.groups[ec.where["a"][0]].weight(0), ref.state_dict()["embedding_bags.a.weight"]
    )
    torch.testing.assert_close(
        ec.groups[ec.where["b"][0]].weight(0), ref_mean.state_dict()["embedding_bags.b.weight"]
    )


def _hashed(opt: str = "rowwise_adagrad", **table_kw):
    tables = [
        TableConfig(name="a", dim=4, capacity=6, **table_kw),
        TableConfig(name="s", dim=4, capacity=16, pooling="none"),
    ]
    feats = [SparseFeature(name="f1", table="a"), SparseFeature(name="f2", table="a")]
    feats.append(SparseFeature(name="q", table="s"))
    return build_embedding_collection(tables, feats, CPU, SparseOptimizerConfig(name=opt, lr=0.1))


def _raw(step: int) -> KeyedJaggedTensor:
    big = [2**62 + step, -(2**63), 17, -5]
    return kjt(
        {
            "f1": [[big[step % 4]], [big[(step + 1) % 4], 17]],
            "f2": [[-5], []],
            "q": [[2**40, -1, 2**40], [7]],
        }
    )


def _train(ec, steps: range) -> None:
    ec.train()
    for s in steps:
        kt, seq = ec.lookup(_raw(s))
        (kt.values().pow(2).sum() + seq["q"].values().sum()).backward()


@pytest.mark.parametrize("opt", ["sgd", "adagrad", "rowwise_adagrad", "adam", "adamw"])
def test_state_round_trip_gives_same_outputs_and_updates(opt: str) -> None:
    ec = _hashed(opt, eviction="lru", evict_fraction=0.0)
    _train(ec, range(4))
    state = {k: v.clone() if torch.is_tensor(v) else v for k, v in ec.state_dict().items()}
    ec2 = _hashed(opt, eviction="lru", evict_fraction=0.0)
    ec2.load_state_dict(state)
    assert ec2.step == ec.step == 4
    _train(ec, range(4, 6))
    _train(ec2, range(4, 6))
    ec.eval(), ec2.eval()
    for s in range(6):
        a, b = ec.lookup(_raw(s)), ec2.lookup(_raw(s))
        assert torch.equal(a[0].values(), b[0].values())
        assert torch.equal(a[1]["q"].values(), b[1]["q"].values())


def test_not_admitted_ids_read_zero_and_get_no_update() -> None:
    ec = _hashed("sgd", admission_min_count=3)
    ec.train()
    x = kjt({"f1": [[11], [12]], "f2": [[13], [14]], "q": [[1], [2]]})
    for _ in range(2):
        out = ec(x)
        assert torch.equal(out.values()[:, :8], torch.zeros(2, 8))
        out.values().sum().backward()
    assert ec.mappers["a"].size == 0
    out = ec(x)  # third sighting: admitted, fresh rows
    assert out.values()[:, :8].abs().sum() > 0 and ec.mappers["a"].size == 4


def test_shared_fallback_row_is_fixed() -> None:
    ec = _hashed("sgd", admission_prob=1e-9, default="shared")
    ec.train()
    x = kjt({"f1": [[11], [12]], "f2": [[13], []], "q": [[1], [2]]})
    first = ec(x).to_dict()["f1"]
    first.sum().backward()
    again = ec(x).to_dict()["f1"]
    assert torch.equal(first, again) and first.abs().sum() > 0
    assert torch.equal(first[0], first[1])


def test_eviction_resets_row_and_optimizer_state() -> None:
    ec = _hashed("adagrad", eviction="lru", evict_fraction=0.0)
    g, j = ec.where["a"]
    grp = ec.groups[g]
    ec.train()
    for i in range(6):  # fill all 6 rows, one id per step
        ec(kjt({"f1": [[100 + i]], "f2": [[]], "q": [[]]})).values().sum().backward()
    row = ec.mappers["a"].lookup(torch.tensor([100])).item() + 1
    assert grp.states(j)[0][row].abs().sum() > 0
    ec(kjt({"f1": [[999]], "f2": [[]], "q": [[]]}))  # evicts 100 (least recent)
    assert ec.mappers["a"].lookup(torch.tensor([100])).item() == -1
    assert ec.mappers["a"].lookup(torch.tensor([999])).item() + 1 == row
    assert grp.states(j)[0][row].abs().sum() == 0


@pytest.mark.parametrize("opt", ["adagrad", "adam"])
def test_growth_keeps_weights_and_optimizer_state(opt: str) -> None:
    ec = _hashed(opt, growable=True, grow_at=0.5)
    g, j = ec.where["a"]
    ec.train()
    ec(kjt({"f1": [[1], [2]], "f2": [[3], []], "q": [[], []]})).values().sum().backward()
    ec.eval()
    probe = kjt({"f1": [[1], [2]], "f2": [[3], []], "q": [[], []]})
    before = ec(probe).values().clone()
    states = [s[1:4].clone() for s in ec.groups[g].states(j)]
    ec.train()
    ec(kjt({"f1": [[10 + i] for i in range(8)], "f2": [[]] * 8, "q": [[]] * 8}))
    assert (
        ec.mappers["a"].capacity >= 12
        and ec.groups[g].tables[j].rows == ec.mappers["a"].capacity + 1
    )
    ec.eval()
    assert torch.equal(ec(probe).values(), before)
    for s, old in zip(ec.groups[g].states(j), states):
        assert torch.equal(s[1:4], old)
    fresh = _hashed(opt, growable=True, grow_at=0.5)
    fresh.load_state_dict(ec.state_dict())  # a grown table loads into a new module
    fresh.eval()
    assert torch.equal(fresh(probe).values(), before)


def test_full_table_without_eviction_raises_with_name() -> None:
    ec = _hashed("sgd")
    ec.train()
    with pytest.raises(TableFullError, match="'a'"):
        ec(kjt({"f1": [list(range(7))], "f2": [[]], "q": [[]]}))


def test_bad_input() -> None:
    ec = _hashed("sgd")
    bad = KeyedJaggedTensor(
        keys=["f1", "f2", "q"],
        values=torch.tensor([1.5, 2.0, 3.0]),
        lengths=torch.tensor([1, 1, 1]),
    )
    with pytest.raises(EmbeddingError, match="integers"):
        ec(bad)
    with pytest.raises(EmbeddingError, match="no feature"):
        ec(kjt({"f1": [[1]]}))
    empty = kjt({"f1": [[], []], "f2": [[], []], "q": [[], []]})
    kt, seq = ec.lookup(empty)
    assert torch.equal(kt.values(), torch.zeros(2, 8)) and seq["q"].values().shape == (0, 4)
    many = kjt({"f1": [[3] * 1_000_000], "f2": [[]], "q": [[]]})
    out = ec(many).to_dict()["f1"]
    assert ec.mappers["a"].size == 1 and torch.isfinite(out).all()
    with pytest.raises(ConfigError, match="model.tables.a.dim"):
        build_embedding_collection(
            [TableConfig(name="a", dim=2, capacity=4)], [SparseFeature(name="a")], CPU
        )
    bypass = build_embedding_collection(
        [TableConfig(name="a", dim=4, capacity=4, mapper="none")], [SparseFeature(name="a")], CPU
    )
    with pytest.raises(EmbeddingError, match=r"\[0, 4\)"):
        bypass(kjt({"a": [[4]]}))


def test_weighted_fp16_and_shared_table() -> None:
    tables = [TableConfig(name="t", dim=4, capacity=10, dtype="fp16")]
    feats = [
        SparseFeature(name="u", table="t", weight_column="uw"),
        SparseFeature(name="v", table="t"),
    ]
    ec = build_embedding_collection(tables, feats, CPU)
    x = kjt({"u": [[5, 6]], "v": [[5]]}, weights={"u": [[2.0, 0.5]], "v": [[1.0]]})
    ec.eval()
    with torch.no_grad():
        ec.train()
        out = ec(x).to_dict()
    g, j = ec.where["t"]
    w = ec.groups[g].weight(j).float()
    r = ec.mappers["t"].lookup(torch.tensor([5, 6])) + 1
    torch.testing.assert_close(out["u"][0], 2.0 * w[r[0]] + 0.5 * w[r[1]])
    torch.testing.assert_close(out["v"][0], w[r[0]])  # shared table: same row for id 5


def test_export_embeddings(tmp_path) -> None:
    ec = _hashed("sgd")
    _train(ec, range(3))
    ec.export_embeddings(tmp_path / "emb.safetensors")
    got = load_file(str(tmp_path / "emb.safetensors"))
    ids, rows = ec.mappers["a"].items()
    assert got["a.ids"].tolist() == ids.tolist()
    torch.testing.assert_close(got["a.weights"], ec.groups[ec.where["a"][0]].weight(0)[rows + 1])
    assert set(got["s.ids"].tolist()) == {2**40, -1, 7}


def test_trainer_skips_fused_parameters() -> None:
    ec = _hashed("rowwise_adagrad")
    model = torch.nn.ModuleDict({"emb": ec, "mlp": torch.nn.Linear(3, 1)})
    sparse, dense = split_parameters(model)
    assert sparse == [] and {id(p) for p in dense} == {id(p) for p in model["mlp"].parameters()}


def test_torchrec_tables_describe_the_layout() -> None:
    from torchrec import EmbeddingBagCollection, EmbeddingCollection

    ec = _hashed("sgd")
    cfgs = {c.name: c for c in ec.torchrec_tables()}
    assert cfgs["a"].num_embeddings == 7 and cfgs["a"].feature_names == ["f1", "f2"]
    EmbeddingBagCollection(tables=[cfgs["a"]], device=torch.device("meta"))
    EmbeddingCollection(tables=[cfgs["s"]], device=torch.device("meta"))


def test_output_keys_follow_feature_order_across_groups() -> None:
    tables = [
        TableConfig(name="a", dim=4, capacity=8),
        TableConfig(name="b", dim=8, capacity=8, pooling="mean"),
    ]
    feats = [
        SparseFeature(name="x", table="b"),
        SparseFeature(name="y", table="a"),
        SparseFeature(name="z", table="b"),
    ]
    ec = build_embedding_collection(tables, feats, CPU)
    kt = ec(kjt({"x": [[1]], "y": [[2]], "z": [[1, 1]]}))
    assert kt.keys() == ["x", "y", "z"] and kt.length_per_key() == [8, 4, 8]
    d = kt.to_dict()
    torch.testing.assert_close(d["x"], d["z"])  # same table, same id, mean pooling
    torch.testing.assert_close(kt.values()[:, 8:12], d["y"])


@pytest.mark.parametrize("opt", ["adagrad", "rowwise_adagrad", "adam"])
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_fresh_rows_written_natively_equal_the_tensor_path(
    opt: str, dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recis.embedding import collection
    from recis.ops.id_mapper_probe import native_kernels

    if native_kernels() is None:
        pytest.skip("native kernels not built here")
    if opt == "adam" and dtype == "fp16":
        pytest.skip("recis' Adam tables are fp32")

    def engine():
        return _hashed(opt, eviction="lru", evict_fraction=0.0, growable=False, dtype=dtype)

    native, tensor = engine(), engine()
    _train(native, range(1, 9))  # a 6-row table: ids evicted and rows reused with fresh state
    calls = []
    monkeypatch.setattr(collection, "native_applies", lambda w, s: calls.append(1) and False)
    _train(tensor, range(1, 9))
    assert calls  # the tensor path really ran
    for name, (g, j) in native.where.items():
        a, b = native.groups[g], tensor.groups[g]
        assert torch.equal(a.weight(j), b.weight(j)), name
        for sa, sb in zip(a.states(j), b.states(j)):
            assert torch.equal(sa, sb), name
    assert native.mappers["a"].size == 6


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_unpooled_lookup_without_grad_gathers_the_same_rows(dtype: str) -> None:
    """Without autograd a pooling-none group gathers its rows from the weights instead of
    the one-id-bag lookup: the same fp32 values, feature-major, each feature from its own
    table, an empty batch included."""
    from recis.embedding.groups import FbgemmTableGroup, TableSlot

    slots = [
        TableSlot(name="a", dim=4, rows=9, init_scale=0.5, features=["x", "y"]),
        TableSlot(name="b", dim=4, rows=5, init_scale=0.5, features=["z"]),
    ]
    opt = SparseOptimizerConfig(name="rowwise_adagrad", lr=0.1)
    group = FbgemmTableGroup(slots, "none", dtype, opt, CPU, rows_checked=True)
    lengths = torch.tensor([3, 0, 0, 2, 0, 2])  # x: 3 + 0 ids, y: 0 + 2, z: 0 + 2
    indices = torch.tensor([0, 8, 4, 7, 1, 4, 3])
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    looked_up = group(indices, offsets)  # grad enabled: the one-id-bag lookup
    with torch.no_grad():
        gathered = group(indices, offsets)
        empty = group(torch.zeros(0, dtype=torch.int64), torch.zeros(7, dtype=torch.int64))
        no_rows = group(torch.zeros(0, dtype=torch.int64), torch.zeros(1, dtype=torch.int64))
    assert looked_up.requires_grad and gathered.dtype == torch.float32
    assert torch.equal(gathered, looked_up.detach())
    want = torch.cat([group.weight(0)[indices[:5]], group.weight(1)[indices[5:]]]).float()
    assert torch.equal(gathered, want) and gathered.abs().sum() > 0
    assert empty.shape == no_rows.shape == (0, 4) and no_rows.dtype == torch.float32
