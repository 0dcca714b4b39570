"""Lazy row-wise Adam/AdamW equal torch's dense optimizers on the rows they touch."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recis.config import SparseOptimizerConfig, TableConfig
from recis.embedding import build_embedding_collection
from recis.features import SparseFeature
from recis.optim.sparse_adam import AdamHyper, adam_state, adam_update_rows


@settings(max_examples=20, deadline=None)
@given(
    decoupled=st.booleans(),
    wd=st.sampled_from([0.0, 0.01, 0.3]),
    lr=st.sampled_from([1e-3, 0.05]),
    rows=st.lists(st.integers(0, 15), min_size=1, max_size=8, unique=True),
    seed=st.integers(0, 1000),
)
def test_rows_match_dense_adam(decoupled: bool, wd: float, lr: float, rows, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    w0 = torch.randn(16, 4, generator=gen)
    dense = torch.nn.Parameter(w0.clone())
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    opt = cls([dense], lr=lr, weight_decay=wd, eps=1e-8)
    table, state = w0.clone(), adam_state(16, 4, torch.device("cpu"))
    hp = AdamHyper(lr=lr, weight_decay=wd, decoupled=decoupled)
    r = torch.tensor(rows)
    for _ in range(5):
        g = torch.randn(len(rows), 4, generator=gen)
        full = torch.zeros(16, 4)
        full[r] = g
        dense.grad = full
        opt.step()
        adam_update_rows(table, state, r, g, hp)
    torch.testing.assert_close(table[r], dense.detach()[r], rtol=1e-5, atol=1e-6)
    untouched = torch.ones(16, dtype=torch.bool)
    untouched[r] = False
    assert torch.equal(table[untouched], w0[untouched])  # lazy: no decay of untouched rows


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_collection_adam_matches_embedding_bag_with_torch_adam(name: str) -> None:
    opt = SparseOptimizerConfig(name=name, lr=0.05, weight_decay=0.1)
    ec = build_embedding_collection(
        [TableConfig(name="t", dim=3, capacity=12, mapper="none", pooling="mean")],
        [SparseFeature(name="t")],
        torch.device("cpu"),
        optimizer=opt,
    )
    g, j = ec.where["t"]
    ref = torch.nn.EmbeddingBag(12, 3, mode="mean")
    with torch.no_grad():
        ref.weight.copy_(ec.groups[g].weight(j))
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    dense_opt = cls(ref.parameters(), lr=0.05, weight_decay=0.1)
    gen = torch.Generator().manual_seed(0)
    touched = torch.tensor([2, 5, 9])
    for step in range(4):
        extra = torch.randint(0, 12, (3,), generator=gen)
        vals = torch.cat([touched, extra])  # 2, 5, 9 are in every batch
        x = KeyedJaggedTensor(keys=["t"], values=vals, lengths=torch.tensor([2, 1, 3]))
        out = ec(x).values()
        want = ref(vals, torch.tensor([0, 2, 3]))
        if step == 0:  # later, rows touched only sometimes differ (lazy vs dense)
            torch.testing.assert_close(out, want)
        gout = torch.randn(out.shape, generator=gen)
        (out * gout).sum().backward()
        dense_opt.zero_grad()
        (want * gout).sum().backward()
        dense_opt.step()
    torch.testing.assert_close(ec.groups[g].weight(j)[touched], ref.weight.detach()[touched])
