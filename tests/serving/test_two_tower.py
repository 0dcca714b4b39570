"""Two-tower export (towers split, item corpus, faiss index) and top-K serving."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from recis.errors import CheckpointError, ConfigError
from recis.export import (
    ExportOptions,
    RetrievalModel,
    export_run,
    load_version,
    read_manifest,
    versions,
)
from recis.export.delta import load_part, version_chain
from recis.export.index import IndexOptions, build_faiss
from recis.export.parity import retrieval_parity
from recis.export.publish import prune_versions
from recis.export.source import load_run
from recis.export.towers import KINDS, SIDES, encode_corpus, side_schema, tower_part
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
    two_tower_run: Path, tmp_path_factory: pytest.TempPathFactory, serve_export: Any
) -> Iterator[Any]:
    # through the command line, with the catalogue file as the corpus
    items = two_tower_run.parent / "data" / "items.parquet"
    out = tmp_path_factory.mktemp("tt_published")
    yield from serve_export(two_tower_run, out, "--items", str(items))


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


def test_concurrent_topk_requests_batched_answer_as_alone(tt_server: Any) -> None:
    """/topk requests arriving together (the server batches within 30 ms) are searched in
    fewer calls than requests, each with its own k and exclusions, as when sent alone."""
    rows = _rows(tt_server.run, 12)
    query = [c for c in rows[0] if c.startswith("query")]
    bodies = []
    for i in range(6):
        body: dict[str, Any] = {"rows": [{c: r[c] for c in query} for r in rows[2 * i : 2 * i + 2]]}
        body["k"] = 3 + i
        if i % 2:  # some requests exclude the items another request would get first
            body["exclude"] = [[1, 2, 3], []]
        bodies.append(body)
    alone = [tt_server.call("/topk", b) for b in bodies]
    assert all(status == 200 for status, _ in alone)
    got, searches = tt_server.concurrently("/topk", bodies)
    assert searches < 6  # some were searched together
    for i in range(6):
        assert got[i]["ids"] == alone[i][1]["ids"]
        assert len(got[i]["ids"][0]) == 3 + i
        np.testing.assert_allclose(got[i]["scores"], alone[i][1]["scores"], rtol=0, atol=1e-6)


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


def _tt_options(run: Path, **kw: Any) -> ExportOptions:
    items = str(run.parent / "data" / "items.parquet")
    return ExportOptions(fmt="torchscript", items=items, **kw)


@pytest.fixture(scope="module")
def tt_deltas(two_tower_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export folder of the two-tower run: v000001 full at step 4; v000002 a delta of it
    at the run's last checkpoint; v000003 a delta of v000002 (same checkpoint: no row
    changed); v000004 a full export of that checkpoint."""
    out = tmp_path_factory.mktemp("tt_deltas")
    step4 = str(two_tower_run / "checkpoints" / "step-00000004")
    export_run(two_tower_run, out, _tt_options(two_tower_run, checkpoint=step4))
    for delta in (True, True, False):
        export_run(two_tower_run, out, _tt_options(two_tower_run, delta=delta))
    return out


PARTS = [tower_part(side, kind) for side in SIDES for kind in KINDS]


def _part_tensors(version: Path) -> dict[str, dict[str, torch.Tensor]]:
    chain = version_chain(version, read_manifest(version))
    return {p.key: load_part(chain, p) for p in PARTS if p.locate(chain[-1][1])[0]}


def test_two_tower_delta_loads_as_full_export(tt_deltas: Path, two_tower_run: Path) -> None:
    v1, v2, v3, v4 = (tt_deltas / f"v00000{i}" for i in range(1, 5))
    m2, m4 = read_manifest(v2), read_manifest(v4)
    assert m2["delta"]["base"] == "v000001" and read_manifest(v3)["delta"]["base"] == "v000002"
    assert m4["delta"] is None
    full = _part_tensors(v4)
    # the fixture's towers: pooled ids on both sides, the query's behaviour sequence
    assert set(full) == {"query.tables", "query.sequence", "item.tables"}
    deltas = {f"{k}.delta.safetensors" for k in full}
    assert deltas <= set(m2["files"]) and not {f"{k}.safetensors" for k in full} & set(m2["files"])
    for version in (v2, v3):  # one delta on a full version, and a delta of that delta
        applied = _part_tensors(version)
        assert applied.keys() == full.keys()
        for part, tensors in full.items():
            assert applied[part].keys() == tensors.keys(), part
            for k in tensors:
                assert torch.equal(applied[part][k], tensors[k]), (version.name, part, k)
    # training steps 5-8 touched some ids only; the same checkpoint again: no row at all
    for part in full:
        live = sum(t.ids for t in tower_part(*part.split(".")).locate(m2)[1])
        assert 0 < sum(m2["delta"]["rows"][part].values()) < live, (part, m2["delta"], live)
        assert sum(read_manifest(v3)["delta"]["rows"][part].values()) == 0
    size = {
        v: sum(
            (v / f).stat().st_size
            for f in read_manifest(v)["files"]
            if ".tables" in f or ".sequence" in f
        )
        for v in (v2, v3, v4)
    }
    assert size[v3] < size[v2] < size[v4], size
    # served: the delta versions answer /topk and /score exactly as the full one
    rows = _rows(two_tower_run, 16)
    ids4, scores4 = RetrievalModel(v4).topk_rows(rows, 10)
    for version in (v2, v3):
        ids, scores = RetrievalModel(version).topk_rows(rows, 10)
        np.testing.assert_array_equal(ids, ids4)
        np.testing.assert_array_equal(scores, scores4)
        np.testing.assert_array_equal(
            RetrievalModel(version).score_rows(rows)["click"],
            RetrievalModel(v4).score_rows(rows)["click"],
        )
    assert not np.array_equal(RetrievalModel(v1).topk_rows(rows, 10)[1], scores4)
    # --keep 2 keeps v000003 and v000004, and v000003's bases: nothing is removed
    assert prune_versions(tt_deltas, 2) == []


def test_two_tower_delta_refusals(tt_deltas: Path, two_tower_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(tt_deltas, out)
    with pytest.raises(ConfigError, match="v000004 has int8_embeddings=False"):
        export_run(two_tower_run, out, _tt_options(two_tower_run, delta=True, int8=True))
    (out / "v000001" / "READY").unlink()  # the base of v000002, itself v000003's base
    for v in ("v000002", "v000003"):
        with pytest.raises(CheckpointError, match=f"base {out / 'v000001'} is missing"):
            RetrievalModel(out / v)
    shutil.rmtree(out / "v000001")
    with pytest.raises(CheckpointError, match=f"base {out / 'v000001'} is missing"):
        load_version(out / "v000003")
    RetrievalModel(out / "v000004")  # a full version needs no base
    # a base whose tables are another encoding (its manifest edited): refused on load
    m = json.loads((out / "v000002" / "manifest.json").read_text())
    (out / "v000002" / "manifest.json").write_text(json.dumps({**m, "int8_embeddings": True}))
    with pytest.raises(CheckpointError, match="v000002 has int8_embeddings=True, not False"):
        RetrievalModel(out / "v000003")


def test_two_tower_delta_on_a_dlrm_base_refused(
    dlrm_run: Path, two_tower_run: Path, tmp_path: Path
) -> None:
    export_run(dlrm_run, tmp_path / "out", ExportOptions(fmt="torchscript"))
    with pytest.raises(ConfigError, match=r"base v000001's query.tables tables are absent"):
        export_run(two_tower_run, tmp_path / "out", _tt_options(two_tower_run, delta=True))
    assert versions(tmp_path / "out") == ["v000001"]


def test_server_swaps_to_a_delta_version_and_answers_as_full(tt_server: Any) -> None:
    run, out = tt_server.run, tt_server.out
    queries = [{k: v for k, v in r.items() if k.startswith("query")} for r in _rows(run, 8)]
    status, full = tt_server.call("/topk", {"rows": queries, "k": 10})  # v000001: full, last
    assert status == 200, full
    step4 = str(run / "checkpoints" / "step-00000004")
    items = str(run.parent / "data" / "items.parquet")
    export_run(run, out, ExportOptions(checkpoint=step4, items=items))
    tt_server.wait_version("v000002")
    assert tt_server.call("/topk", {"rows": queries, "k": 10})[1]["scores"] != full["scores"]
    # the last checkpoint again, as a delta on the step-4 version: the same answers as v000001
    v3 = export_run(run, out, ExportOptions(delta=True, items=items))
    assert read_manifest(v3)["delta"]["base"] == "v000002"
    tt_server.wait_version("v000003")
    status, body = tt_server.call("/topk", {"rows": queries, "k": 10})
    assert status == 200 and body["version"] == "v000003"
    assert (body["ids"], body["scores"]) == (full["ids"], full["scores"])
