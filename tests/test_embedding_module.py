"""The hashed collection behaves as an ordinary nn.Module inside a model."""

from __future__ import annotations

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recis.config import TableConfig
from recis.embedding import (
    HashedEmbeddingCollection,
    ModuloEmbeddingBagCollection,
    build_embedding_collection,
)
from recis.features import SparseFeature


def _kjt() -> KeyedJaggedTensor:
    return KeyedJaggedTensor.from_lengths_sync(
        keys=["a", "b"],
        values=torch.tensor([5, -(2**62), 7, 9], dtype=torch.int64),
        lengths=torch.tensor([1, 1, 1, 1]),
    )


def test_module_to_keeps_outputs() -> None:
    # Module.to goes through nn.Module._apply: the collection must not shadow it
    torch.manual_seed(0)
    tables = [TableConfig(name="t", dim=8, capacity=16)]
    feats = [SparseFeature("a", table="t"), SparseFeature("b", table="t")]
    coll = build_embedding_collection(tables, feats, "cpu")
    assert isinstance(coll, HashedEmbeddingCollection)
    coll.train()
    coll(_kjt())  # admit the ids
    coll.eval()
    before = coll(_kjt()).values().clone()
    moved = coll.to(torch.device("cpu"))
    assert moved is coll
    assert torch.equal(coll(_kjt()).values(), before)


def test_modulo_engine_is_plain_torchrec() -> None:
    tables = [TableConfig(name="t", dim=4, capacity=10)]
    feats = [SparseFeature("a", table="t"), SparseFeature("b", table="t")]
    coll = build_embedding_collection(tables, feats, "cpu", engine="modulo")
    assert isinstance(coll, ModuloEmbeddingBagCollection)
    out = coll(_kjt()).to_dict()
    w = coll.ebc.embedding_bags["t"].weight
    # row = id mod capacity (python's non-negative remainder, as torch.remainder)
    assert torch.allclose(out["a"][0], w[5 % 10]) and torch.allclose(
        out["a"][1], w[(-(2**62)) % 10]
    )
    assert torch.allclose(out["b"][1], w[9])


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_weighted_mean_pooling_gradient_matches_its_forward(optimizer):
    """fbgemm's CPU MEAN backward drops the 1/L when per-id weights are given; the
    collection runs mean as a weighted sum, so the update is d(sum(w*x)/L)/dx = w/L."""
    from recis.config import SparseOptimizerConfig

    ec = HashedEmbeddingCollection(
        [TableConfig(name="t", dim=4, capacity=10, pooling="mean", mapper="none")],
        [SparseFeature(name="f", table="t", weight_column="w")],
        "cpu",
        optimizer=SparseOptimizerConfig(name=optimizer, lr=1.0),
    )
    g, j = ec.where["t"]
    before = ec.groups[g].weight(j).detach().clone()
    kjt = KeyedJaggedTensor(
        keys=["f"],
        values=torch.tensor([1, 2, 3]),
        lengths=torch.tensor([3]),
        weights=torch.tensor([0.5, 2.0, 1.0]),
    )
    out = ec(kjt).values()
    torch.testing.assert_close(
        out[0], (before[1:4] * torch.tensor([[0.5], [2.0], [1.0]])).sum(0) / 3
    )
    out.sum().backward()
    step = before - ec.groups[g].weight(j).detach()
    if optimizer == "sgd":  # step = lr * grad = w / L
        torch.testing.assert_close(step[1:4, 0], torch.tensor([0.5, 2.0, 1.0]) / 3)
    else:  # Adam's first step is lr * sign(grad) for every touched row
        assert torch.all(step[1:4] > 0.99)
