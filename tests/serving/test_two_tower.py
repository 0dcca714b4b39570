"""Two-tower export (towers split, item corpus, faiss index) and top-K serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from recis.cli import main
from recis.errors import ConfigError
from recis.export import ExportOptions, export_run, read_manifest
from recis.export.index import IndexOptions, build_faiss
from recis.export.parity import retrieval_parity
from recis.export.source import load_run
from recis.export.towers import encode_corpus, side_schema
from recis.io import make_reader, to_batch
from recis.models.two_tower import TwoTower


def test_served_topk_equals_brute_force_ranking(tt_server: Any) -> None:
    version = tt_server.out / "v000001"
    m = read_manifest(version)
    assert m["model"] == "two_tower" and m["index"]["kind"] == "flat"
    assert m["index"]["items"] == 4000  # the catalogue file given as --items
    assert {"query_tower.pt2", "item_tower.pt2", "query.sequence.safetensors"} <= set(m["files"])
    got = retrieval_parity(tt_server.run, version, k=10)
    assert got["rows"] == 400 and got["topk_equal"] == 1.0
    assert got["query_max_abs_diff"] <= 1e-5 and got["topk_score_max_abs_diff"] <= 1e-5


def _eval_model(run: Path) -> tuple[Any, TwoTower]:
    cfg, trainer, _, _ = load_run(run)
    assert isinstance(trainer.model, TwoTower)
    return cfg, trainer.model


def test_ivf_probing_every_list_is_exact() -> None:
    gen = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(300, 8, generator=gen), dim=1).numpy()
    flat, _ = build_faiss(emb, IndexOptions("flat"))
    ivf, entry = build_faiss(emb, IndexOptions("ivf", nlist=6, nprobe=6))
    assert entry == {"kind": "ivf", "items": 300, "dim": 8, "nlist": 6, "nprobe": 6}
    q = emb[:20] + 0.1
    np.testing.assert_array_equal(flat.search(q, 7)[1], ivf.search(q, 7)[1])
    with pytest.raises(ConfigError, match="--nlist"):
        build_faiss(emb, IndexOptions("ivf", nlist=301))


def test_split_towers_refused_for_dlrm(dlrm_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--split-towers: model DLRM has no towers"):
        export_run(dlrm_run, tmp_path / "out", ExportOptions(split_towers=True))
    assert not list((tmp_path / "out").glob("v*"))


@pytest.fixture(scope="module")
def tt_server(
    two_tower_run: Path, tmp_path_factory: pytest.TempPathFactory, start_server: Any
) -> Iterator[Any]:
    out = tmp_path_factory.mktemp("tt_published")
    items = two_tower_run.parent / "data" / "items.parquet"
    # through the command line, with the catalogue file as the corpus
    cmd = ["export", str(two_tower_run), "--out", str(out), "--items", str(items)]
    assert main(cmd) == 0
    yield from start_server(out, two_tower_run)


def _rows(run: Path, n: int) -> list[dict[str, Any]]:
    table = pq.read_table(run.parent / "data" / "eval").slice(0, n)
    return [{k: v for k, v in r.items() if k != "label"} for r in table.to_pylist()]


def test_topk_over_http_with_exclusion(tt_server: Any) -> None:
    run = tt_server.run
    rows = _rows(run, 6)
    cfg, model = _eval_model(run)
    # brute force with the eval model: its query vectors against its vectors of the catalogue
    items = side_schema(cfg.data.schema_, model.item_features)
    reader = make_reader(str(run.parent / "data" / "items.parquet"), items, batch_size=512)
    ids, emb = encode_corpus(model, reader)
    query = side_schema(cfg.data.schema_, model.query_features)
    queries = [{c: r[c] for c in query.columns} for r in rows]  # query columns only
    batch = to_batch(pq.read_table(run.parent / "data" / "eval").slice(0, 6), query)
    with torch.no_grad():
        scores = (model.encode_queries(batch) @ emb.T).numpy()  # [6, N]
    order = np.argsort(-scores, axis=1, kind="stable")

    status, body = tt_server.call("/topk", {"rows": queries, "k": 5})
    assert status == 200, body
    np.testing.assert_array_equal(body["ids"], ids[order[:, :5]])
    ref = np.take_along_axis(scores, order[:, :5], 1)
    np.testing.assert_allclose(body["scores"], ref, atol=1e-5, rtol=0)
    # excluding each row's two best items (the user's seen items): ranks 3..7
    exclude = [[int(ids[order[i, 0]]), int(ids[order[i, 1]])] for i in range(6)]
    status, body = tt_server.call("/topk", {"rows": queries, "k": 5, "exclude": exclude})
    assert status == 200 and body["ids"] == ids[order[:, 2:7]].tolist()


def test_pair_rows_score_as_eval_and_bad_requests(tt_server: Any) -> None:
    run = tt_server.run
    _, model = _eval_model(run)
    rows = _rows(run, 8)
    status, body = tt_server.score(rows)
    assert status == 200, body
    table = pq.read_table(run.parent / "data" / "eval").slice(0, 8)
    with torch.no_grad():
        ref = torch.sigmoid(model(to_batch(table, model.schema))["click"]).numpy()
    np.testing.assert_allclose(body["scores"]["click"], ref, atol=1e-5, rtol=0)

    query = {k: v for k, v in rows[0].items() if k.startswith("query")}
    status, body = tt_server.call("/topk", {"rows": [dict(query, query_cat=1.5)]})
    assert status == 422 and body["field"] == "query_cat"
    status, body = tt_server.call("/topk", {"rows": [{"query_id": 1}]})
    assert status == 422 and body["field"] == "query_cat" and "missing" in body["error"]
    status, body = tt_server.call("/topk", {"rows": [query], "k": 0})
    assert status == 422 and body["field"] == "k"
    status, body = tt_server.call("/topk", {"rows": [query], "exclude": [[1], [2]]})
    assert status == 422 and body["field"] == "exclude"
