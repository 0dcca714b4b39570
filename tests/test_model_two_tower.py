"""Dual tower: logQ correction, frequency estimate, exact top-K metrics, a tiny LLM tower."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recis.config import TrainConfig, load_config
from recis.io import ParquetReader
from recis.models import TwoTower, TwoTowerConfig
from recis.models.two_tower import (
    FrequencyEstimator,
    build_index,
    evaluate_retrieval,
    exact_topk,
    in_batch_softmax_loss,
    read_relevant,
    recall_ndcg,
)
from recis.synthetic import generate_retrieval
from recis.train.callbacks import Callback
from recis.train.trainer import Trainer


def test_logq_correction_follows_the_formula() -> None:
    torch.manual_seed(0)
    u = F.normalize(torch.randn(5, 8), dim=-1)
    v = F.normalize(torch.randn(7, 8), dim=-1)
    p = torch.tensor([0.5, 0.01, 0.2, 0.05, 0.1, 0.3, 0.02])
    tau = 0.1
    got = in_batch_softmax_loss(u, v, tau, torch.log(p))
    logits = u @ v.T / tau - torch.log(p)[None, :]
    expected = -(logits.diag()[:5] - torch.logsumexp(logits, dim=1)).mean()
    torch.testing.assert_close(got, expected)
    plain = in_batch_softmax_loss(u, v, tau)
    assert abs(plain.item() - got.item()) > 1e-3
    # a uniform q is a constant shift: no change
    torch.testing.assert_close(in_batch_softmax_loss(u, v, tau, torch.full((7,), -2.0)), plain)


def test_frequency_estimator_tracks_gap() -> None:
    est = FrequencyEstimator(buckets=1024, alpha=0.2)
    for step in range(200):
        ids = [7] + ([11] if step % 4 == 0 else [])
        est.update(torch.tensor(ids))
    p = est.log_prob(torch.tensor([7, 11])).exp()
    torch.testing.assert_close(p, torch.tensor([1.0, 0.25]), atol=0.02, rtol=0.0)


def test_exact_topk_and_recall_match_brute_force() -> None:
    torch.manual_seed(1)
    q, items = torch.randn(9, 6), torch.randn(53, 6)
    scores, rows = exact_topk(q, items, k=10, chunk=7)
    full = q @ items.T
    ref_s, ref_rows = full.topk(10, dim=1)
    torch.testing.assert_close(scores, ref_s)
    assert torch.equal(rows, ref_rows)
    rng = np.random.default_rng(0)
    relevant = [rng.choice(53, size=int(rng.integers(1, 8)), replace=False) for _ in range(9)]
    ranked = torch.argsort(full, dim=1, descending=True).numpy()
    got = recall_ndcg(rows.numpy(), relevant, ks=(5, 10))
    for k in (5, 10):
        rec = np.mean([len(set(r[:k]) & set(rel)) / len(rel) for r, rel in zip(ranked, relevant)])
        ndcg = []
        for r, rel in zip(ranked, relevant):
            dcg = sum(1 / np.log2(i + 2) for i, x in enumerate(r[:k]) if x in set(rel))
            ndcg.append(dcg / sum(1 / np.log2(i + 2) for i in range(min(k, len(rel)))))
        assert got[f"recall@{k}"] == pytest.approx(rec)
        assert got[f"ndcg@{k}"] == pytest.approx(np.mean(ndcg))


TINY_BERT = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": 512,
    "max_position_embeddings": 64,
}


def test_llm_tower_trains_saves_and_loads(tmp_path) -> None:
    data = tmp_path / "ret"
    generate_retrieval(data, 1200, 300, files=1, seed=3, num_items=500, num_queries=200)
    cfg = load_config(
        "examples/two_tower_synthetic.yaml",
        [f"data.path={data}", f"model.llm={{config: {TINY_BERT}}}", "model.extra_negatives=16"],
    )
    schema = cfg.data.schema_
    torch.manual_seed(0)
    model = TwoTower(cfg.model, schema, torch.device("cpu"))
    assert isinstance(cfg.model, TwoTowerConfig)
    before = model.text.model.embeddings.word_embeddings.weight.detach().clone()
    train = ParquetReader(data / "train", schema, 128, shuffle=True)
    losses = []

    class Record(Callback):
        def on_step_end(self, trainer: Trainer, record: dict) -> None:
            losses.append(record)

    trainer = Trainer(
        model, train, None, TrainConfig(max_steps=5, progress=False), callbacks=[Record()]
    )
    trainer.fit()
    assert int(model.seen) > 0  # the reservoir of negatives filled up
    after = model.text.model.embeddings.word_embeddings.weight.detach()
    assert not torch.equal(before, after)  # the LLM itself trained
    assert all(np.isfinite(r["loss"]) for r in losses)
    # save the LLM, rebuild from the directory, restore the rest: same embeddings
    model.text.save_pretrained(tmp_path / "llm")
    cfg2 = load_config(
        "examples/two_tower_synthetic.yaml",
        [f"data.path={data}", f"model.llm={{path: {tmp_path / 'llm'}, freeze: true}}"],
    )
    loaded = TwoTower(cfg2.model, schema, torch.device("cpu"))
    torch.testing.assert_close(
        loaded.text.model.embeddings.word_embeddings.weight, after, atol=0, rtol=0
    )
    loaded.load_state_dict(model.state_dict())
    assert not any(p.requires_grad for p in loaded.text.parameters())
    batch = next(iter(ParquetReader(data / "eval", schema, 64)))
    model.eval()
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_queries(batch), model.encode_queries(batch))
        torch.testing.assert_close(loaded.encode_items(batch), model.encode_items(batch))
    # retrieval evaluation over the corpus runs end to end
    item_schema = type(schema)(sparse=[f for f in schema.sparse if f.name in model.item_features])
    q_schema = type(schema)(sparse=[f for f in schema.sparse if f.name in model.query_features])
    index = build_index(model, ParquetReader(data / "items.parquet", item_schema, 1024))
    assert index.embeddings.shape == (500, 32)
    relevant = read_relevant(data / "queries.parquet")
    queries = ParquetReader(data / "queries.parquet", q_schema, 512)
    metrics = evaluate_retrieval(model, queries, index, relevant, ks=(10, 50))
    assert 0.0 <= metrics["recall@10"] <= metrics["recall@50"] <= 1.0


@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
def test_llm_tower_pooling_and_bf16(pooling) -> None:
    from recis.models.text_towers import LLMTower, LLMTowerConfig

    torch.manual_seed(0)
    tower = LLMTower(LLMTowerConfig(config=TINY_BERT, pooling=pooling, dtype="bfloat16")).eval()
    assert next(tower.model.parameters()).dtype == torch.bfloat16
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    mask = ids > 0
    with torch.no_grad():
        out, h = tower(ids, mask), tower.hidden(ids, mask)
    assert out.dtype == torch.float32 and out.shape == (2, 32)
    expected = {
        "mean": torch.stack([h[0, :3].mean(0), h[1, :2].mean(0)]),
        "cls": h[:, 0],
        "last": torch.stack([h[0, 2], h[1, 1]]),
    }[pooling]
    torch.testing.assert_close(out, expected)


def test_retrieval_eval_user_must_be_a_feature_or_extra() -> None:
    from recis.errors import ConfigError
    from recis.features import Schema, SparseFeature
    from recis.models.two_tower import RetrievalEvalConfig

    schema = Schema(sparse=[SparseFeature(name="user_id"), SparseFeature(name="item_id")])
    tables = [
        {"name": "user_id", "dim": 4, "capacity": 8},
        {"name": "item_id", "dim": 4, "capacity": 8},
    ]
    base = {"tables": tables, "query": {"sparse": ["user_id"]}, "item": {"sparse": ["item_id"]}}
    bad = TwoTowerConfig(**base, retrieval_eval=RetrievalEvalConfig(seen="x.parquet", user="uid"))
    with pytest.raises(ConfigError, match="model.retrieval_eval.user: 'uid'"):
        TwoTower(bad, schema, torch.device("cpu"))
    good = TwoTowerConfig(
        **base, retrieval_eval=RetrievalEvalConfig(seen="x.parquet", user="user_id")
    )
    model = TwoTower(good, schema, torch.device("cpu"))
    assert model.config.retrieval_eval.ks == [10, 50]
    assert TwoTower(TwoTowerConfig(**base), schema, torch.device("cpu")).retrieval_corpus() is None


def test_recency_attention_pool_matches_its_formula() -> None:
    from recis.models.retrieval_layers import RecencyAttentionPool

    torch.manual_seed(0)
    pool = RecencyAttentionPool(dim=4, max_len=5)
    values = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    out = pool(values, mask)
    assert out.shape == (3, 4)
    # row 0 by hand: 3 items, the last one (position 2) has recency 0
    x = values[0, :3] + pool.position.weight[torch.tensor([2, 1, 0])]
    w = torch.softmax(pool.score(x).squeeze(-1), dim=0)
    torch.testing.assert_close(out[0], (w[:, None] * x).sum(0))
    assert torch.equal(out[2], torch.zeros(4))  # an empty history pools to zeros
    # padding values are ignored
    noisy = values.clone()
    noisy[0, 3:] = 100.0
    torch.testing.assert_close(pool(noisy, mask)[0], out[0])
