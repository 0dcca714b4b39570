"""HHFT: heterogeneous layer, Hiformer composite projection and pruning, sequence padding."""

from __future__ import annotations

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recis.config import TableConfig
from recis.features import DenseFeature, LabelSpec, Schema, SparseFeature
from recis.io.batch import Batch
from recis.models import HHFT, HHFTConfig, build_model
from recis.models.hhft import GroupedLinear, HeterogeneousLayer, HiformerLayer
from recis.optim.dense import split_parameters

D = 8


def _schema() -> Schema:
    return Schema(
        dense=[DenseFeature(name="age"), DenseFeature(name="price")],
        sparse=[
            SparseFeature(name="user"),
            SparseFeature(name="item"),
            SparseFeature(name="cat"),
            SparseFeature(name="hist_item", table="item_seq"),
        ],
        labels=[LabelSpec(name="click"), LabelSpec(name="buy")],
    )


def _config(**kw) -> HHFTConfig:
    tables = [
        TableConfig(name="user", dim=D, capacity=50),
        TableConfig(name="item", dim=D, capacity=40),
        TableConfig(name="cat", dim=4, capacity=10),
        TableConfig(name="item_seq", dim=D, capacity=40, pooling="none"),
    ]
    blocks = [
        {"name": "user", "sparse": ["user"], "dense": ["age"], "tokens": 2},
        {"name": "item", "sparse": ["item", "cat"], "dense": ["price"]},
        {"name": "behaviour", "sequence": ["hist_item"], "target": ["item"]},
    ]
    args = dict(tables=tables, blocks=blocks, d_model=16, num_heads=2, head_mlp=[8])
    args.update(kw)
    return HHFTConfig(**args)


def _batch(rows: list[tuple[int, int, int, list[int]]]) -> Batch:
    """rows: (user, item, cat, history)."""
    values, lengths = [], []
    for col in range(3):
        values += [r[col] for r in rows]
        lengths += [1] * len(rows)
    for r in rows:
        values += r[3]
        lengths.append(len(r[3]))
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["user", "item", "cat", "hist_item"],
        values=torch.tensor(values, dtype=torch.int64),
        lengths=torch.tensor(lengths, dtype=torch.int64),
    )
    dense = torch.tensor([[0.1 * r[0], 0.2 * r[1]] for r in rows], dtype=torch.float32)
    y = torch.tensor([float(r[0] % 2) for r in rows])
    return Batch(sparse=kjt, dense=dense, labels={"click": y, "buy": y})


def test_tied_heterogeneous_attention_equals_multihead_attention() -> None:
    torch.manual_seed(0)
    d, heads, groups = 16, 4, [0, 0, 1, 2, 2, 3]
    layer = HeterogeneousLayer(groups, d, heads, ffn_mult=2)
    mha = nn.MultiheadAttention(d, heads, batch_first=True)
    w_in = mha.in_proj_weight.detach()
    b_in = mha.in_proj_bias.detach()
    with torch.no_grad():
        for i, proj in enumerate((layer.q, layer.k, layer.v)):
            for linear in proj.linears:
                linear.weight.copy_(w_in[i * d : (i + 1) * d])
                linear.bias.copy_(b_in[i * d : (i + 1) * d])
        for linear in layer.o.linears:
            linear.weight.copy_(mha.out_proj.weight.detach())
            linear.bias.copy_(mha.out_proj.bias.detach())
    x = torch.randn(3, len(groups), d)
    expected, _ = mha(x, x, x, need_weights=False)
    torch.testing.assert_close(layer.attention(x), expected, atol=1e-5, rtol=1e-5)
    # untied weights give a different result (the test can fail)
    with torch.no_grad():
        layer.q.linears[1].weight.add_(0.5)
    assert not torch.allclose(layer.attention(x), expected, atol=1e-3)


def test_full_rank_factorized_composite_equals_unfactorized() -> None:
    torch.manual_seed(1)
    n, d = 4, 8
    full = HiformerLayer(n, d, heads=2, ffn_mult=2, rank=None)
    fact = HiformerLayer(n, d, heads=2, ffn_mult=2, rank=n * d)
    state = {k: v for k, v in full.state_dict().items() if not k.startswith("kv.")}
    fact.load_state_dict(state, strict=False)
    w = full.kv.weight.detach()  # [2 N d, N d]
    u, s, vh = torch.linalg.svd(w, full_matrices=False)  # w = u diag(s) vh, rank N d
    with torch.no_grad():
        fact.kv[0].weight.copy_(vh)  # [r, N d]
        fact.kv[1].weight.copy_(u * s)  # [2 N d, r]
        fact.kv[1].bias.copy_(full.kv.bias)
    x = torch.randn(5, n, d)
    torch.testing.assert_close(fact(x), full(x), atol=1e-4, rtol=1e-4)
    # a lower rank is a different function
    low = HiformerLayer(n, d, heads=2, ffn_mult=2, rank=2)
    low.load_state_dict(state, strict=False)
    assert not torch.allclose(low(x), full(x), atol=1e-3)


def test_pruned_last_layer_matches_full_layer_on_task_tokens() -> None:
    torch.manual_seed(2)
    layer = HiformerLayer(6, 8, heads=2, ffn_mult=2, rank=5)
    x = torch.randn(4, 6, 8)
    idx = torch.tensor([4, 5])
    torch.testing.assert_close(layer(x, only=idx), layer(x)[:, idx], atol=1e-6, rtol=1e-6)
    # and the whole model gives the same logits with and without pruning
    torch.manual_seed(3)
    pruned = HHFT(_config(hiformer_layers=2, kv_rank=12), _schema(), torch.device("cpu"))
    unpruned = HHFT(_config(hiformer_layers=2, kv_rank=12, prune_last=False), _schema(), "cpu")
    unpruned.load_state_dict(pruned.state_dict())
    batch = _batch([(1, 2, 3, [4, 5]), (6, 7, 1, [8]), (9, 3, 2, [])])
    a, b = pruned(batch), unpruned(batch)
    for t in ("click", "buy"):
        torch.testing.assert_close(a[t], b[t], atol=1e-6, rtol=1e-6)


def test_padding_does_not_change_outputs() -> None:
    torch.manual_seed(4)
    model = HHFT(_config(), _schema(), torch.device("cpu"))
    rows = [(1, 2, 3, [4, 5]), (6, 7, 1, [8]), (9, 3, 2, [])]
    # one training-mode pass gives every id a row (in eval, unseen ids read the default row)
    model(_batch(rows + [(2, 2, 2, list(range(1, 10))), (1, 2, 3, [9, 9])]))
    model.eval()
    alone = model(_batch(rows))
    # a row with a long history pads every other row's sequence to length 9
    padded = model(_batch(rows + [(2, 2, 2, list(range(1, 10)))]))
    for t in ("click", "buy"):
        torch.testing.assert_close(padded[t][:3], alone[t], atol=1e-6, rtol=1e-6)
    # the history does matter
    changed = model(_batch([(1, 2, 3, [9, 9])] + rows[1:]))
    assert not torch.allclose(changed["click"][0], alone["click"][0])


def test_hhft_trains_and_builds_from_registry() -> None:
    torch.manual_seed(5)
    model = build_model(_config(kv_rank=4), _schema(), "cpu")
    batch = _batch([(i % 7, (3 * i) % 11, i % 5, [i % 13, (i + 1) % 13]) for i in range(32)])
    # embedding rows update in backward (fused optimizer); the rest through Adam, as in the Trainer
    sparse, dense = split_parameters(model)
    opt = torch.optim.Adam(dense + sparse, lr=1e-2)
    losses = []
    for _ in range(60):
        out = model(batch)
        loss = sum(
            nn.functional.binary_cross_entropy_with_logits(out[t], batch.labels[t]) for t in out
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert set(out) == {"click", "buy"} and out["click"].shape == (32,)
    assert losses[-1] < 0.5 * losses[0]


def test_target_shares_the_sequence_table() -> None:
    """A target feature on the history's table reads the history's rows (DIN-style)."""
    torch.manual_seed(6)
    schema = _schema()
    schema.sparse[3] = SparseFeature(name="hist_item", table="item")
    tables = [t for t in _config().tables if t.name != "item_seq"]
    model = HHFT(_config(tables=tables), schema, torch.device("cpu"))
    assert model.shared_names == ["item"] and "item" not in model.pooled_names
    batch = _batch([(1, 5, 2, [5, 7]), (2, 7, 3, [])])
    model(batch)  # training mode: ids get rows
    model.eval()
    seqs = model.sequence(batch.sparse)
    cand, hist = seqs["item"][0][:, 0], seqs["hist_item"][0]  # [B, D], [B, L, D]
    torch.testing.assert_close(cand[0], hist[0, 0])  # item 5 == the first history item 5
    torch.testing.assert_close(cand[1], hist[0, 1])  # item 7 == row 0's second history item
    out = model(batch)
    assert out["click"].shape == (2,)


def test_feature_tokens_give_each_dense_feature_its_own_token() -> None:
    """``dense_tokens: feature``: a block's dense values become one token each,
    ``x_f w_f + b_f`` (checked by hand), placed after the block's id token; a block of dense
    features only has no block token; changing one dense value moves only its own token."""
    torch.manual_seed(7)
    schema = Schema(
        dense=[DenseFeature(name=n) for n in ("age", "price", "rate")],
        sparse=_schema().sparse[:2],
        labels=[LabelSpec(name="click")],
    )
    blocks = [
        {"name": "user", "dense": ["age", "rate"]},  # dense only: two feature tokens
        {"name": "item", "sparse": ["item"], "dense": ["price"], "tokens": 2},
    ]
    tables = _config().tables[:2]
    model = HHFT(
        _config(tables=tables, blocks=blocks, dense_tokens="feature"), schema, torch.device("cpu")
    )
    block_wise = HHFT(_config(tables=tables, blocks=blocks), schema, torch.device("cpu"))
    # user: 2 feature tokens; item: 2 id tokens + 1 feature token; 1 task token
    assert model.task_index.tolist() == [5] and block_wise.task_index.tolist() == [3]
    assert model.hetero[0].q.groups == [0, 0, 1, 1, 1, 2]
    assert model.proj[1].in_features == D  # item's id only: its dense value is a token
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["user", "item"], values=torch.tensor([1, 2, 3, 4]), lengths=torch.ones(4).long()
    )
    dense = torch.tensor([[0.5, -1.0, 2.0], [1.5, 3.0, -0.5]])
    batch = Batch(sparse=kjt, dense=dense, labels={"click": torch.zeros(2)})
    tokens = model.tokens(batch)  # [B, N, d]
    assert tokens.shape == (2, 6, 16)
    user, item = model.feature_tokens
    for j, col in enumerate((0, 2)):  # age, rate
        expected = dense[:, col, None] * user.weight[j] + user.bias[j]
        torch.testing.assert_close(tokens[:, j], expected)
    torch.testing.assert_close(tokens[:, 4], dense[:, 1, None] * item.weight[0] + item.bias[0])
    moved = dense.clone()
    moved[:, 2] += 1.0  # rate
    changed = (model.tokens(Batch(sparse=kjt, dense=moved, labels={})) != tokens).any(-1).any(0)
    assert changed.tolist() == [False, True, False, False, False, False]
    assert model(batch)["click"].shape == (2,)


def test_grouped_linear_routes_each_token_to_its_groups_linear() -> None:
    """Token ``n`` goes through ``linears[groups[n]]`` (groups need not be contiguous); with
    ``tokens`` only those tokens are given and computed."""
    torch.manual_seed(8)
    groups = [2, 0, 2, 1, 0]
    layer = GroupedLinear(groups, 4, 3)
    x = torch.randn(6, len(groups), 4)
    expected = torch.stack([layer.linears[g](x[:, n]) for n, g in enumerate(groups)], dim=1)
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer(x[:, [3, 0]], tokens=[3, 0]), expected[:, [3, 0]])
    assert all(isinstance(m, nn.Linear) for m in layer.linears) and len(layer.linears) == 3
    # one batched matmul for all tokens: each group's weights get the gradient of the
    # tokens routed to it, as with one nn.Linear call per token
    layer(x).pow(2).sum().backward()
    batched = [(lin.weight.grad.clone(), lin.bias.grad.clone()) for lin in layer.linears]
    layer.zero_grad()
    expected = torch.stack([layer.linears[g](x[:, n]) for n, g in enumerate(groups)], dim=1)
    expected.pow(2).sum().backward()
    for (w, b), lin in zip(batched, layer.linears):
        torch.testing.assert_close(w, lin.weight.grad)
        torch.testing.assert_close(b, lin.bias.grad)


def test_sequence_mass_is_a_soft_count_of_matching_history() -> None:
    """``sequence_mass``: the pooled vector gets ``log(1 + sum_l sigmoid(score_l))`` over the
    unpadded positions (by hand), which grows with the number of history entries, while the
    softmax pooling of a repeated entry does not; an empty history gives 0."""
    from recis.models.hhft import TargetAttention

    torch.manual_seed(7)
    attn = TargetAttention(seq_dim=4, target_dim=3, mass=True)
    seq, target = torch.randn(2, 5, 4), torch.randn(2, 3)
    mask = torch.tensor([[True, True, True, False, False], [False] * 5])
    out = attn(seq, mask, target)  # [B, Ds + 1]
    scores = (attn.q(target[0]) * attn.k(seq[0, :3])).sum(-1) / 2.0  # scale 1 / sqrt(4)
    torch.testing.assert_close(out[0, 4], torch.log1p(torch.sigmoid(scores).sum()))
    torch.testing.assert_close(out[0, :4], torch.softmax(scores, 0) @ seq[0, :3])
    assert out.shape == (2, 5) and out[1].abs().max() == 0
    # the same entry once or three times: softmax pooling equal, the mass grows
    one = attn(seq[:1, :1], mask[:1, :1], target[:1])
    three = attn(seq[:1, :1].expand(1, 3, 4), mask[:1, :3], target[:1])
    torch.testing.assert_close(one[:, :4], three[:, :4])
    assert three[0, 4] > one[0, 4] > 0
    # in the model: one more input column per sequence block, padding still changes nothing
    model = HHFT(_config(sequence_mass=True), _schema(), torch.device("cpu"))
    assert model.proj[2].in_features == D + 1
    rows = [(1, 2, 3, [4, 5]), (6, 7, 1, [8])]
    model(_batch(rows + [(2, 2, 2, list(range(1, 10)))]))
    model.eval()
    alone = model(_batch(rows))["click"]
    padded = model(_batch(rows + [(2, 2, 2, list(range(1, 10)))]))["click"][:2]
    torch.testing.assert_close(padded, alone, atol=1e-6, rtol=1e-6)


def test_token_dropout_zeroes_whole_block_tokens_in_training_only() -> None:
    """``token_dropout: p``: in training each row's block tokens are each zeroed with
    probability ``p`` before the encoder (the task tokens never); in evaluation the model is
    the one without it, weight for weight."""
    torch.manual_seed(3)
    model = HHFT(_config(token_dropout=0.5), _schema(), torch.device("cpu"))
    plain = HHFT(_config(), _schema(), torch.device("cpu"))
    plain.load_state_dict(model.state_dict())
    rows = [(u % 9, u % 7, u % 5, [u % 11, (u + 3) % 11]) for u in range(256)]
    batch = _batch(rows)
    model.eval(), plain.eval()
    for task, logits in model(batch).items():
        torch.testing.assert_close(logits, plain(batch)[task])
    seen = []
    model.hetero[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    model.train()
    model(batch)
    tokens = model.tokens(batch, model.dense_norm(batch.dense))  # [B, N, d]: 4 block + 2 task
    x = seen[0]
    zero = (x == 0).all(-1)  # [B, N]
    same = (x == tokens).all(-1)
    assert (zero | same).all() and not zero[:, -2:].any()  # task tokens kept
    share = zero[:, :-2].float().mean().item()
    assert 0.4 < share < 0.6, share
