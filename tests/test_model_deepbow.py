"""DeepBoW: score = sum over shared terms, sparsity budget, exported bags score like the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recis.features import LabelSpec, Schema, SparseFeature
from recis.io.batch import Batch
from recis.io.tokenizers import hashed_ngrams
from recis.models import DeepBoW, DeepBoWConfig
from recis.models.deepbow import load_bags, score_bags, score_exported

QUERIES = ["red shoe", "blue phone case", "cheap red shoe", "lamp"]
PRODUCTS = ["red running shoe sale", "phone case blue silicone", "shoe rack", "desk lamp led"]


def _schema() -> Schema:
    return Schema(
        sparse=[
            SparseFeature(name="query_tokens"),
            SparseFeature(name="product_tokens"),
            SparseFeature(name="product_id"),
        ],
        labels=[LabelSpec(name="relevant")],
    )


def _batch(queries: list[str], products: list[str]) -> Batch:
    q, p = hashed_ngrams(queries), hashed_ngrams(products)
    values = np.concatenate(q + p + [np.arange(len(products)) + 100])
    lengths = [len(x) for x in q] + [len(x) for x in p] + [1] * len(products)
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["query_tokens", "product_tokens", "product_id"],
        values=torch.from_numpy(values.astype(np.int64)),
        lengths=torch.tensor(lengths),
    )
    n = len(queries)
    labels = {"relevant": torch.tensor([1.0, 1.0, 2 / 3, 1.0][:n])}
    return Batch(sparse=kjt, dense=torch.zeros(n, 0), labels=labels)


def _model(**kw) -> DeepBoW:
    torch.manual_seed(0)
    cfg = DeepBoWConfig(vocab=512, dim=16, max_len=8, expansion_k=6, bag_size=10, **kw)
    return DeepBoW(cfg, _schema(), torch.device("cpu"))


def test_score_is_sum_over_shared_terms_and_bags_respect_budget() -> None:
    model = _model().eval()
    batch = _batch(QUERIES, PRODUCTS)
    from recis.models.deepbow import _text

    qt, qw = model.bag(*_text(batch, "query_tokens", 8))
    pt, pw = model.bag(*_text(batch, "product_tokens", 8))
    assert qt.shape == (4, 10) and pw.shape == (4, 10)
    assert ((qw > 0).sum(1) <= 10).all() and ((pw > 0).sum(1) <= 10).all()
    # the expansion bag adds terms that are not in the text (up to expansion_k)
    in_text = torch.remainder(_text(batch, "query_tokens", 8)[0], 512)
    extra = [(set(qt[i][qw[i] > 0].tolist()) - set(in_text[i].tolist())) for i in range(4)]
    assert all(0 < len(e) <= 6 for e in extra)
    logits = model(batch)["relevant"]
    by_hand = []
    for i in range(4):
        q = dict(zip(qt[i].tolist(), qw[i].tolist()))
        p = dict(zip(pt[i].tolist(), pw[i].tolist()))
        by_hand.append(sum(q[t] * p[t] for t in set(q) & set(p) if q[t] > 0 and p[t] > 0))
    expected = model.calibrate(torch.tensor(by_hand))
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        model.calibrate(score_bags(qt, qw, pt, pw)), logits, atol=1e-5, rtol=1e-5
    )
    # explain: with room for every text term, words of both texts are always matched
    wide = DeepBoW(
        DeepBoWConfig(vocab=512, dim=16, max_len=8, expansion_k=6, bag_size=20), _schema(), "cpu"
    )
    rows = wide.explain("red shoe", "red running shoe sale")
    terms = {r["term"] for r in rows}
    assert {"red", "shoe"} <= terms
    wide.eval()
    one = _batch(["red shoe"], ["red running shoe sale"])
    raw = (wide(one)["relevant"] - wide.bias) / wide.scale
    assert sum(r["contribution"] for r in rows) == pytest.approx(raw.item(), rel=1e-4)


@pytest.mark.parametrize("fmt", ["parquet", "safetensors"])
def test_exported_bags_score_like_the_model(tmp_path, fmt) -> None:
    model = _model(sparsity_weight=0.01)
    batch = _batch(QUERIES, PRODUCTS)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    first = None
    for _ in range(15):
        model.train()
        out = model(batch)
        loss = model.loss(out, batch)["relevant"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first
    model.eval()
    path = model.encode_products([batch], tmp_path / f"bags.{fmt}", format=fmt)
    pid, terms, weights = load_bags(path)
    assert pid.tolist() == [100, 101, 102, 103]
    assert all(len(t) <= 10 for t in terms)
    from recis.models.deepbow import _text

    with torch.no_grad():
        qt, qw = model.bag(*_text(batch, "query_tokens", 8))
        online = model(batch)["relevant"]
    for i in range(4):
        keep = qw[i] > 0
        s = score_exported(qt[i][keep].numpy(), qw[i][keep].numpy(), terms[i], weights[i])
        assert model.calibrate(torch.tensor(s)).item() == pytest.approx(online[i].item(), abs=1e-4)


def test_deepbow_trains_from_raw_text_and_explains_with_words(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recis.features import TextFeature
    from recis.io import Reader
    from recis.io.tokenizers import piece_names, tokenizer_for

    rng = np.random.default_rng(0)
    pairs = [(q, p, 1.0) for q, p in zip(QUERIES, PRODUCTS)]
    pairs += [(q, PRODUCTS[(i + 1) % 4], 0.0) for i, q in enumerate(QUERIES)]
    pairs += [("红色跑鞋", "男款红色跑鞋 特价", 1.0), ("台灯", "男款红色跑鞋 特价", 0.0)]
    rows = [pairs[i] for i in rng.permutation(len(pairs))]
    pq.write_table(
        pa.table({k: [r[j] for r in rows] for j, k in enumerate(["query", "title", "label"])}),
        tmp_path / "train.parquet",
    )
    tok = {"kind": "ngram", "words": 2, "chars": [1, 2]}
    schema = Schema(
        text=[
            TextFeature(name="query", tokenizer=tok, max_length=24),
            TextFeature(name="title", tokenizer=tok, max_length=24),
        ],
        labels=[LabelSpec(name="relevant", column="label")],
    )
    torch.manual_seed(0)
    cfg = DeepBoWConfig(
        query_text="query", product_text="title", vocab=4096, dim=16, max_len=24, bag_size=48
    )
    model = DeepBoW(cfg, schema, torch.device("cpu"))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(20):
        for batch in Reader(tmp_path / "train.parquet", schema, 16):
            assert batch.text["query"].shape == (10, 24)
            model.train()
            loss = model.loss(model(batch), batch)["relevant"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    model.eval()
    with torch.no_grad():
        (batch,) = list(Reader(tmp_path / "train.parquet", schema, 16, shuffle=False))
        p = torch.sigmoid(model(batch)["relevant"])
    assert p[batch.labels["relevant"] > 0].min() > p[batch.labels["relevant"] == 0].max()
    tokenizer = tokenizer_for(schema.text[0])
    # expansion terms (in neither text) are named from the training texts' pieces
    names = piece_names(tokenizer, [r[0] for r in rows] + [r[1] for r in rows], cfg.vocab)
    for query, title in [("red shoe", "red running shoe sale"), ("红色跑鞋", "男款红色跑鞋 特价")]:
        rows = model.explain(query, title, vocabulary=names)
        grams = {g for t in (query, title) for _, g in tokenizer.pieces(t)}
        in_text = [r for r in rows if r["in_query"] or r["in_product"]]
        assert len(in_text) >= 2 and {r["term"] for r in in_text} <= grams
        for r in rows:  # an expansion term (in neither text) is named when its bucket is known
            if not (r["in_query"] or r["in_product"]):
                assert r["term"] == names.get(r["term_id"], f"#{r['term_id']}")
        # the contributions add up to the model's raw score for the pair
        one = {"query": [query], "title": [title], "label": [1.0]}
        pq.write_table(pa.table(one), tmp_path / "one.parquet")
        (b,) = list(Reader(tmp_path / "one.parquet", schema, 1))
        with torch.no_grad():
            raw = (model(b)["relevant"] - model.bias) / model.scale
        assert sum(r["contribution"] for r in rows) == pytest.approx(raw.item(), rel=1e-4)
    assert {"红色", "跑鞋"} & {r["term"] for r in model.explain("红色跑鞋", "男款红色跑鞋 特价")}
