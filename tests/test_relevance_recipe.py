"""Relevance scoring side: DeepBoW/DenseRelevance calibration with dense inputs and a product
prior, DeepBoW's pairwise scoring path, and the qbqtc recipe configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recis.config import load_config
from recis.features import Schema
from recis.io.batch import Batch
from recis.models import build_model
from recis.models.deepbow import DeepBoW, DeepBoWConfig
from recis.models.dense_relevance import DenseRelevance

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "examples" / "recipes" / "qbqtc_relevance"
SCHEMA = Schema(
    labels=[{"name": "very_relevant"}, {"name": "relevant"}],
    dense=[{"name": "lexical", "dim": 3}],
)


def batch(rows: int = 6, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(1, 20, (rows, 5), generator=g)
    t = torch.randint(1, 20, (rows, 9), generator=g)
    t[0, 4:] = 0  # a shorter title: padding
    t_mask = (t > 0).long()
    empty = torch.zeros(0, dtype=torch.long)
    return Batch(
        sparse=KeyedJaggedTensor.from_lengths_sync([], empty, empty),
        dense=torch.randn(rows, 3, generator=g),
        labels={"very_relevant": torch.ones(rows), "relevant": torch.zeros(rows)},
        text={"q": q, "q_mask": torch.ones_like(q), "t": t, "t_mask": t_mask},
    )


def config(**kw: object) -> DeepBoWConfig:
    base = dict(query_text="q", product_text="t", vocab=64, dim=8, expansion_k=0, bag_size=16)
    return DeepBoWConfig(**{**base, **kw})


def test_pairwise_scoring_equals_the_dense_bags_and_calibration_by_hand() -> None:
    torch.manual_seed(0)
    model = DeepBoW(config(product_prior=True, prior_weights="bag"), SCHEMA, "cpu").eval()
    with torch.no_grad():
        model.prior.normal_()
    b = batch()
    out = model(b)
    q = model.dense_bag(b.text["q"], b.text["q_mask"].bool())  # [B, V]
    p = model.dense_bag(b.text["t"], b.text["t_mask"].bool())
    s = (q * p).sum(-1)
    head = model.head
    mlp = head.dense(b.dense)  # batch norm (running statistics in eval) + MLP: [B, 2]
    for i, task in enumerate(model.tasks):
        prior = model.config.prior_scale * p @ model.prior[:, i]  # prior_weights: bag
        by_hand = head.scale[i] * s + head.bias[i] + mlp[:, i] + prior
        torch.testing.assert_close(out[task], by_hand, atol=1e-5, rtol=1e-5)
    # a second task has its own calibration: the two outputs differ
    assert not torch.allclose(out["very_relevant"], out["relevant"])


def test_uniform_prior_is_the_mean_of_the_title_terms_priors() -> None:
    torch.manual_seed(0)
    model = DeepBoW(config(product_prior=True, dense_inputs=False), SCHEMA, "cpu").eval()
    with torch.no_grad():
        model.prior.normal_()
    b = batch()
    out = model(b)
    q = model.dense_bag(b.text["q"], b.text["q_mask"].bool())
    p = model.dense_bag(b.text["t"], b.text["t_mask"].bool())
    for row in range(6):
        terms = b.text["t"][row][b.text["t_mask"][row].bool()] % 64
        prior = model.config.prior_scale * model.prior[terms].mean(0)  # [N]
        s = (q[row] * p[row]).sum()
        by_hand = model.scale * s + model.bias + prior
        torch.testing.assert_close(out["very_relevant"][row], by_hand[0])
        torch.testing.assert_close(out["relevant"][row], by_hand[1])


@pytest.mark.parametrize("weights", ["uniform", "bag"])
def test_explain_prior_sums_to_the_prior_of_the_logit(weights: str) -> None:
    torch.manual_seed(0)
    # a wide term space: no two pieces of the title share an id
    cfg = config(product_prior=True, dense_inputs=False, prior_weights=weights, vocab=1 << 16)
    model = DeepBoW(cfg, SCHEMA, "cpu").eval()
    with torch.no_grad():
        model.prior.normal_()
    title = "red shoes red shoes for men"  # no text feature: hashed word 1-2-grams
    rows = model.explain_prior(title)
    pairs = model._tokens(cfg.product_text, title)
    assert {r["term"] for r in rows} == {piece for _, piece in pairs}
    assert "red_shoes" in {r["term"] for r in rows}
    ids = torch.tensor([[i for i, _ in pairs]])
    mask = torch.ones_like(ids, dtype=torch.bool)
    prior = model._prior(ids, mask, model.term_bag(ids, mask))[0]  # [N]
    for k, task in enumerate(model.tasks):
        total = sum(float(r[f"prior/{task}"]) for r in rows)
        assert total == pytest.approx(float(prior[k]), abs=1e-5)
    first = [float(r["prior/very_relevant"]) for r in rows]
    assert first == sorted(first, reverse=True)
    no_prior = DeepBoW(config(), SCHEMA, "cpu")
    assert no_prior.explain_prior(title) == []


def test_sparsity_penalty_is_the_same_on_both_paths() -> None:
    torch.manual_seed(0)
    model = DeepBoW(config(sparsity_weight=0.5), SCHEMA, torch.device("cpu")).train()
    b = batch()
    q_in = (b.text["q"], b.text["q_mask"].bool())
    p_in = (b.text["t"], b.text["t_mask"].bool())
    dense = model._flops(model.dense_bag(*q_in)) + model._flops(model.dense_bag(*p_in))
    pairwise = model._flops(model.term_bag(*q_in)) + model._flops(model.term_bag(*p_in))
    torch.testing.assert_close(pairwise, dense)
    out = model(b)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(out["very_relevant"], torch.ones(6))
    torch.testing.assert_close(model.loss(out, b)["very_relevant"], bce + 0.5 * dense)


def test_dense_inputs_change_the_logit_and_can_be_switched_off() -> None:
    torch.manual_seed(0)
    b = batch()
    for cls in (DeepBoW, DenseRelevance):
        on = cls(config(), SCHEMA, torch.device("cpu")).eval()
        off = cls(config(dense_inputs=False), SCHEMA, torch.device("cpu")).eval()
        assert on.head.dense is not None and off.head.dense is None
        moved = Batch(**{**b.__dict__, "dense": b.dense + 3.0})
        assert not torch.allclose(on(b)["relevant"], on(moved)["relevant"])
        torch.testing.assert_close(off(b)["relevant"], off(moved)["relevant"])


@pytest.mark.parametrize("name", ["deepbow", "dense_relevance"])
def test_recipe_config_loads_and_builds(name: str) -> None:
    cfg = load_config(RECIPE / f"{name}.yaml")
    assert cfg.model.name == name
    assert cfg.train.early_stopping is not None and cfg.train.early_stopping.restore_best
    assert cfg.train.early_stopping.metric == "very_relevant/auc"
    assert [t.name for t in cfg.data.schema_.text] == ["query", "title"]
    model = build_model(cfg.model, cfg.data.schema_, torch.device("cpu"))
    assert model.tasks == ["very_relevant", "relevant"]
    assert model.head.dense is not None  # reads the 9 lexical features
    assert model.head.dense[0].num_features == 9


def test_both_recipes_share_every_setting_but_the_model() -> None:
    def settings(name: str) -> list[str]:
        lines = (RECIPE / f"{name}.yaml").read_text().splitlines()
        return [line for line in lines if not line.startswith("#")]

    a, b = settings("deepbow"), settings("dense_relevance")
    assert len(a) == len(b)
    assert [(x, y) for x, y in zip(a, b) if x != y] == [
        ("run_dir: runs/qbqtc_relevance/deepbow", "run_dir: runs/qbqtc_relevance/dense_relevance"),
        ("  name: deepbow", "  name: dense_relevance"),
    ]


def test_benchmark_skips_without_the_shared_data(tmp_path) -> None:
    import importlib.util

    path = ROOT / "benchmarks" / "real_data_relevance.py"
    spec = importlib.util.spec_from_file_location("real_data_relevance", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.run(tmp_path / "no_data", tmp_path / "work")
    assert list(out) == ["skipped"] and "pairs.parquet" in out["skipped"]
