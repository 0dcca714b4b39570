"""DeepBoW export: raw query and title texts served with eval's relevance scores; tokenizer
files bundled into the version."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recis.config_base import validate
from recis.errors import ConfigError
from recis.export import ExportOptions, export_run, read_manifest
from recis.export.manifest import bundle_tokenizers, manifest_schema
from recis.export.parity import eval_parity
from recis.export.source import load_run
from recis.features import Schema, VocabTokenizer
from recis.io import to_batch
from recis.io.vocab import train_vocabulary
from recis.models.text_towers import text_input


@pytest.fixture(scope="module")
def relevance_server(
    deepbow_run: Path, tmp_path_factory: pytest.TempPathFactory, serve_export: Any
) -> Iterator[Any]:
    yield from serve_export(deepbow_run, tmp_path_factory.mktemp("deepbow_published"))


def test_exported_relevance_equals_eval(relevance_server: Any) -> None:
    version = relevance_server.out / "v000001"
    m = read_manifest(version)
    assert m["model"] == "deepbow" and "relevance.pt2" in m["files"]
    assert {"query_bag.pt2", "products.safetensors"} <= set(m["files"])
    got = eval_parity(relevance_server.run, version)["relevant"]
    assert got["rows"] == 200 and got["max_abs_diff"] <= 1e-5 and got["auc_delta"] == 0.0


def test_raw_text_rows_over_http_score_as_eval(relevance_server: Any) -> None:
    run = relevance_server.run
    table = pq.read_table(run.parent / "data" / "eval").slice(0, 12)
    # only the raw texts travel: the server tokenises them as the reader did in training
    rows = [
        {"query_text": r["query_text"], "product_text": r["product_text"]}
        for r in table.to_pylist()
    ]
    status, body = relevance_server.score(rows)
    assert status == 200, body
    _, trainer, _, _ = load_run(run)
    assert trainer.eval_data is not None
    preds, _ = trainer.predict(trainer.eval_data)
    np.testing.assert_allclose(body["scores"]["relevant"], preds["relevant"][:12], atol=1e-5)
    # concurrent requests are batched (the server runs with --batch-ms 30): token ids of
    # several requests in one forward, each answer as when alone
    scores, forwards = relevance_server.score_concurrently(rows, 6, "relevant")
    assert forwards < 6
    for i in range(6):
        np.testing.assert_allclose(scores[i], preds["relevant"][i : i + 2], atol=1e-5)
    status, body = relevance_server.score([{"query_text": 3, "product_text": "a b"}])
    assert status == 422 and body["field"] == "query_text"


def test_topk_products_by_term_index(relevance_server: Any) -> None:
    run = relevance_server.run
    cfg, trainer, _, _ = load_run(run)
    model = trainer.model
    # brute force with the eval model: the bag of every training product (its last row)
    # against each query's bag, s = <bag_q, bag_p> over the term space
    schema = cfg.data.schema_
    part = dataclasses.replace(schema, dense=[], labels=[], extras=[])
    train = pq.read_table(run.parent / "data" / "train")
    with torch.no_grad():
        products = to_batch(train.select(["product_text", "product_id", "query_text"]), part)
        bags = model.dense_bag(*text_input(products, "product", 32))  # [rows, V]
        pid = products.sparse["product_id"].values().numpy()
        uniq, first_rev = np.unique(pid[::-1], return_index=True)
        bags = bags[torch.from_numpy(len(pid) - 1 - first_rev)]
        eval_rows = pq.read_table(run.parent / "data" / "eval").slice(0, 6)
        queries = to_batch(eval_rows.select(["product_text", "product_id", "query_text"]), part)
        scores = model.dense_bag(*text_input(queries, "query", 32)) @ bags.T  # [6, N]
    best_s, best = scores.topk(7, dim=1)
    rows = [{"query_text": q} for q in eval_rows.column("query_text").to_pylist()]
    status, body = relevance_server.call("/topk", {"rows": rows, "k": 5})
    assert status == 200, body
    assert body["ids"] == uniq[best[:, :5].numpy()].tolist()
    np.testing.assert_allclose(body["scores"], best_s[:, :5].numpy(), atol=1e-5)
    exclude = [uniq[best[i, :2].numpy()].tolist() for i in range(6)]
    status, body = relevance_server.call("/topk", {"rows": rows, "k": 5, "exclude": exclude})
    assert status == 200 and body["ids"] == uniq[best[:, 2:7].numpy()].tolist()


def test_int8_refused_for_deepbow(deepbow_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="DeepBoW has no embedding tables"):
        export_run(deepbow_run, tmp_path / "out", ExportOptions(int8=True))


def test_vocab_tokenizer_is_bundled(tmp_path: Path) -> None:
    texts = ["red running shoes", "blue running shirt", "red shirt", "shoes for running"] * 5
    vocab = tmp_path / "run" / "tokenizer.json"
    vocab.parent.mkdir()
    spec = {"kind": "vocab", "path": str(vocab), "vocab_size": 60, "min_frequency": 1}
    train_vocabulary(validate(VocabTokenizer, spec), iter(texts))
    schema = {"text": [{"name": "q", "tokenizer": spec, "max_length": 6}]}
    version = tmp_path / "v000001"
    version.mkdir()
    bundled = bundle_tokenizers(schema, version)
    assert bundled["text"][0]["tokenizer"]["path"] == "tokenizers/0/tokenizer.json"
    assert (version / "tokenizers" / "0" / "tokenizer.json").read_bytes() == vocab.read_bytes()
    table = pa.table({"q": ["red running shoes", "blue shirt"]})
    before = to_batch(table, validate(Schema, schema)).text["q"]
    vocab.unlink()  # the run directory is not needed any more
    after = to_batch(table, manifest_schema(version, {"schema": bundled})).text["q"]
    assert before.tolist() == after.tolist() and int((before > 0).sum()) >= 4
    with pytest.raises(ConfigError, match="data.schema.text.q.tokenizer.path"):
        bundle_tokenizers(schema, tmp_path / "v000002")
