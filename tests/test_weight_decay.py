"""Embedding weight decay: one step of every sparse optimizer, by hand (numpy) vs the engine.

Semantics (docs/embedding.md): lazy. Each distinct row of the batch gets
``weight_decay * w`` added to its gradient once (L2; ``adamw``: decoupled,
``w *= 1 - lr * weight_decay`` before the Adam step); rows not in the batch are not
touched.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fbgemm_gpu.split_table_batched_embeddings_ops_training import WeightDecayMode
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recis.config import SparseOptimizerConfig, TableConfig
from recis.distributed.sharding import fused_params
from recis.embedding import build_embedding_collection
from recis.errors import ConfigError
from recis.features import SparseFeature
from recis.ops import fused_backward
from recis.optim import sparse_optimizer, split_parameters

OPTIMIZERS = ["sgd", "adagrad", "rowwise_adagrad", "adam", "adamw"]
LR, WD, EPS, B1, B2 = 0.1, 0.5, 1e-8, 0.9, 0.999
ROWS, DIM = 8, 4
# two features on one table (row 3 is in both: decayed once), two samples each
IDS_A, LEN_A = [0, 3, 3], [2, 1]
IDS_B, LEN_B = [3, 5], [1, 1]


def _engine(name: str, pooling: str, wd: float):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return build_embedding_collection(
        [
            TableConfig(
                name="t", dim=DIM, capacity=ROWS, mapper="none", pooling=pooling, init_scale=0.5
            )
        ],
        [SparseFeature(name="a", table="t"), SparseFeature(name="b", table="t")],
        torch.device("cpu"),
        optimizer=SparseOptimizerConfig(name=name, lr=LR, eps=EPS, weight_decay=wd),
    )


def _row_grads(pooling: str, up: np.ndarray) -> np.ndarray:
    """``[ROWS, DIM]`` gradient of each row for upstream gradient ``up`` (one per bag or
    per id), summed over its occurrences."""
    g = np.zeros((ROWS, DIM))
    k = 0
    for f, (ids, lens) in enumerate([(IDS_A, LEN_A), (IDS_B, LEN_B)]):
        pos = 0
        for s, n in enumerate(lens):
            for r in ids[pos : pos + n]:
                if pooling == "none":
                    g[r] += up[k]
                    k += 1
                else:
                    g[r] += up[s, f * DIM : (f + 1) * DIM] / (n if pooling == "mean" else 1)
            pos += n
    return g


def _by_hand(name: str, w0: np.ndarray, g: np.ndarray, rows: list[int]) -> np.ndarray:
    """One step of optimizer ``name`` with weight decay WD on ``rows`` only."""
    w = w0.copy()
    for r in rows:
        gr, wr = g[r].copy(), w0[r].copy()
        if name == "adamw":
            wr = wr * (1 - LR * WD)
        else:
            gr = gr + WD * wr
        if name == "sgd":
            wr = wr - LR * gr
        elif name == "adagrad":
            wr = wr - LR * gr / (np.sqrt(gr * gr) + EPS)
        elif name == "rowwise_adagrad":
            wr = wr - LR * gr / (np.sqrt(np.mean(gr * gr)) + EPS)
        else:  # adam / adamw, first step: bias-corrected moments are g and g^2
            m, v = (1 - B1) * gr / (1 - B1), (1 - B2) * gr * gr / (1 - B2)
            wr = wr - LR * m / (np.sqrt(v) + EPS)
        w[r] = wr
    return w


@pytest.mark.parametrize("native", [True, False], ids=["recis-backward", "fbgemm-backward"])
@pytest.mark.parametrize("pooling", ["sum", "mean", "none"])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_one_step_with_decay_matches_numpy(
    name: str, pooling: str, native: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.set_num_threads(1)
    if not native:  # fbgemm's own CPU backward (what runs without the built kernel)
        monkeypatch.setattr(fused_backward, "native_backward", lambda: None)
    ec = _engine(name, pooling, WD)
    g, j = ec.where["t"]
    w0 = ec.groups[g].weight(j).detach().double().numpy().copy()
    kjt = KeyedJaggedTensor(
        keys=["a", "b"],
        values=torch.tensor(IDS_A + IDS_B),
        lengths=torch.tensor(LEN_A + LEN_B),
    )
    gen = torch.Generator().manual_seed(1)
    if pooling == "none":
        seq = ec.forward_sequences(kjt)
        out = torch.cat([seq["a"].values(), seq["b"].values()])  # [N, D]
    else:
        out = ec(kjt).values()  # [B, 2 * D]
    # small gradients: on a first Adagrad / Adam step an element moves by lr * sign(g),
    # so the decay shows only where it flips a sign
    up = 0.1 * torch.randn(out.shape, generator=gen)
    (out * up).sum().backward()
    want = _by_hand(name, w0, _row_grads(pooling, up.double().numpy()), [0, 3, 5])
    got = ec.groups[g].weight(j).detach().double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # the decay moved the rows: without it the engine lands elsewhere
    assert np.abs(got[[0, 3, 5]] - _by_hand_no_decay(name, w0, up, pooling)).max() > 1e-3


def _by_hand_no_decay(name: str, w0: np.ndarray, up: torch.Tensor, pooling: str) -> np.ndarray:
    global WD
    saved, WD = WD, 0.0
    try:
        return _by_hand(name, w0, _row_grads(pooling, up.double().numpy()), [0, 3, 5])[[0, 3, 5]]
    finally:
        WD = saved


@pytest.mark.parametrize("name", ["sgd", "rowwise_adagrad"])
def test_no_decay_outside_training(name: str) -> None:
    """Eval lookups (no grad) and rows outside the batch are never decayed."""
    ec = _engine(name, "sum", WD)
    g, j = ec.where["t"]
    w0 = ec.groups[g].weight(j).detach().clone()
    kjt = KeyedJaggedTensor(
        keys=["a", "b"], values=torch.tensor(IDS_A + IDS_B), lengths=torch.tensor(LEN_A + LEN_B)
    )
    with torch.no_grad():
        ec(kjt)
    assert torch.equal(ec.groups[g].weight(j), w0)
    ec(kjt).values().sum().backward()
    untouched = [1, 2, 4, 6, 7]
    assert torch.equal(ec.groups[g].weight(j)[untouched], w0[untouched])


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_modulo_engine_decays_every_row(name: str) -> None:
    """``model.embedding: modulo`` (one process): torchrec's EBC has a dense gradient and
    its rows go to the trainer's torch optimizer of the same name, so decay is dense: every
    row, every step (``rowwise_adagrad`` is torchrec's RowWiseAdagrad: one state per row)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = SparseOptimizerConfig(name=name, lr=LR, eps=EPS, weight_decay=WD)
    ec = build_embedding_collection(
        [TableConfig(name="t", dim=DIM, capacity=ROWS, mapper="none", init_scale=0.5)],
        [SparseFeature(name="a", table="t"), SparseFeature(name="b", table="t")],
        torch.device("cpu"),
        optimizer=cfg,
        engine="modulo",
    )
    sparse, dense = split_parameters(ec)
    assert len(sparse) == 1 and not dense
    opt = sparse_optimizer(sparse, cfg)
    w0 = sparse[0].detach().double().numpy().copy()
    kjt = KeyedJaggedTensor(
        keys=["a", "b"], values=torch.tensor(IDS_A + IDS_B), lengths=torch.tensor(LEN_A + LEN_B)
    )
    out = ec(kjt).values()
    up = 0.1 * torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * up).sum().backward()
    opt.step()
    want = _by_hand(name, w0, _row_grads("sum", up.double().numpy()), list(range(ROWS)))
    np.testing.assert_allclose(sparse[0].detach().double().numpy(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["sgd", "adagrad", "rowwise_adagrad"])
def test_sharded_tables_refuse_decay_on_cpu(name: str) -> None:
    """torchrec-sharded tables (distributed modulo) run fbgemm's CPU kernels, which have
    no decay: refused, naming the field and the optimizer; on CUDA only the kernels that
    decay get it (tests/test_optim_spec.py has the whole table)."""
    cfg = SparseOptimizerConfig(name=name, weight_decay=0.01)
    with pytest.raises(ConfigError, match=rf"train\.sparse_optimizer\.weight_decay.*'{name}'"):
        fused_params(cfg, torch.device("cpu"))
    assert "weight_decay_mode" not in fused_params(
        SparseOptimizerConfig(name=name), torch.device("cpu")
    )
    if name == "rowwise_adagrad":
        assert fused_params(cfg, torch.device("cuda"))["weight_decay_mode"] == WeightDecayMode.L2
    else:  # fbgemm's SGD and Adagrad have no decay on any device
        with pytest.raises(ConfigError, match=rf"fbgemm's {name} kernel has no weight decay"):
            fused_params(cfg, torch.device("cuda"))
    adamw = SparseOptimizerConfig(name="adamw", weight_decay=0.01)
    assert (
        fused_params(adamw, torch.device("cuda"))["weight_decay_mode"] == WeightDecayMode.DECOUPLE
    )


def test_modulo_engine_refuses_per_table_optimizer() -> None:
    """A table's own optimizer (and so its decay) would be ignored by the modulo engine."""
    opt = SparseOptimizerConfig(name="sgd", weight_decay=0.1)
    with pytest.raises(ConfigError, match=r"model\.tables\.t\.optimizer"):
        build_embedding_collection(
            [TableConfig(name="t", dim=DIM, capacity=ROWS, optimizer=opt)],
            [SparseFeature(name="t")],
            torch.device("cpu"),
            engine="modulo",
        )


@pytest.mark.parametrize("name", ["adagrad", "rowwise_adagrad", "adamw"])
def test_distributed_hashed_engine_decays_like_the_collection(name: str) -> None:
    """The sharded hashed engine (one rank, tables split by id: the owner looks up the
    deduplicated ids it is sent) decays each distinct row once, as the plain collection."""
    sys.path.insert(0, str(Path(__file__).parent))
    try:  # its tables (shared, mean, sequence, admission, eviction) and batches
        from test_hashed_sharded import FEATURES, TABLES, batch, step_outputs
    finally:
        sys.path.pop(0)

    from recis.distributed.hashed import ShardedHashedEmbeddingCollection
    from recis.embedding import HashedEmbeddingCollection

    torch.set_num_threads(1)

    def make(wd: float) -> HashedEmbeddingCollection:
        opt = SparseOptimizerConfig(name=name, lr=0.1, weight_decay=wd)
        return HashedEmbeddingCollection(TABLES, FEATURES, "cpu", optimizer=opt, seed=5)

    plain, undecayed = make(0.3), make(0.0)
    sharded = ShardedHashedEmbeddingCollection(make(0.3), exchange=True, placement={})
    for step in range(4):
        kjt = batch(step)
        want = step_outputs(plain, kjt)
        np.testing.assert_allclose(step_outputs(sharded, kjt), want, atol=1e-6)
        step_outputs(undecayed, kjt)
    ids, rows = plain.mappers["a"].items()
    got_ids, got = sharded.gather_rows("a")
    g, j = plain.where["a"]
    order = np.argsort(ids)
    want = plain.groups[g].weight(j)[torch.from_numpy(rows + 1)][torch.from_numpy(order)]
    np.testing.assert_allclose(got, want.detach(), atol=1e-6)
    u_ids, u_rows = undecayed.mappers["a"].items()
    assert sorted(u_ids.tolist()) == sorted(ids.tolist())
    ug, uj = undecayed.where["a"]
    other = undecayed.groups[ug].weight(uj)[torch.from_numpy(u_rows + 1)]
    other = other[torch.from_numpy(np.argsort(u_ids))]
    assert (want - other).abs().max() > 1e-3  # the decay moved the rows
