"""Fields inside struct columns (BigQuery / Spark exports, nested JSON objects) read by their
dotted paths: the same batches as the flat layout in parquet, ORC and JSON Lines, a null
struct as missing values, errors naming the dotted path, split / quantiles / vocab too."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.orc as paorc
import pyarrow.parquet as pq
import pytest
import torch

from recis.errors import ConfigError, DataError
from recis.features import DenseFeature, LabelSpec, Schema, SparseFeature
from recis.io import Reader, jsonl, nested
from recis.io.quantiles import boundaries_from_files
from recis.io.split import read_input, split_table
from recis.io.vocab import read_texts

N = 40
BIG = 2**64 - 1  # a uint64 id above int64


def _nested_rows() -> list[dict]:
    rng = np.random.default_rng(1)
    rows = []
    for i in range(N):
        user = {
            "id": BIG - i if i % 7 == 0 else int(rng.integers(0, 2**40)),
            "age": None if i % 5 == 2 else float(rng.integers(18, 70)),
            "geo": {"city": f"city{i % 4}", "zip": str(i)},
        }
        rows.append(
            {
                "rid": i,
                "user": None if i % 9 == 4 else user,  # a null struct: every field missing
                "ctx": {"hist": [int(x) for x in rng.integers(0, 50, i % 4)], "hour": i % 24},
                "labels": {"click": [float(i % 2)]},  # the single-element list layout
            }
        )
    return rows


def _flat(rows: list[dict]) -> pa.Table:
    out = []
    for r in rows:
        u = r["user"] or {}
        out.append(
            {
                "rid": r["rid"],
                "user.id": u.get("id"),
                "age": u.get("age"),
                "city": (u.get("geo") or {}).get("city"),
                "hist": r["ctx"]["hist"],
                "hour": r["ctx"]["hour"],
                "click": r["labels"]["click"],
            }
        )
    schema = pa.schema(
        [
            ("rid", pa.int64()),
            ("user.id", pa.uint64()),
            ("age", pa.float64()),
            ("city", pa.string()),
            ("hist", pa.list_(pa.int64())),
            ("hour", pa.int64()),
            ("click", pa.list_(pa.float64())),
        ]
    )
    return pa.Table.from_pylist(out, schema=schema)


def _nested_table(rows: list[dict], ids: pa.DataType | None = None) -> pa.Table:
    user = pa.struct(
        [
            ("id", ids or pa.uint64()),
            ("age", pa.float64()),
            ("geo", pa.struct([("city", pa.string()), ("zip", pa.string())])),
        ]
    )
    schema = pa.schema(
        [
            ("rid", pa.int64()),
            ("user", user),
            ("ctx", pa.struct([("hist", pa.list_(pa.int64())), ("hour", pa.int64())])),
            ("labels", pa.struct([("click", pa.list_(pa.float64()))])),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def _schema(**columns: str) -> Schema:
    c = {"id": "user.id", "age": "user.age", "city": "user.geo.city", "hist": "ctx.hist"}
    c = {**c, "hour": "ctx.hour", "click": "labels.click", **columns}
    return Schema(
        dense=[DenseFeature(name="age", column=c["age"], fill=-1.0)],
        sparse=[
            SparseFeature(name="uid", column=c["id"], table="user"),
            SparseFeature(name="city", column=c["city"], dtype="string"),
            SparseFeature(name="hist", column=c["hist"], table="item"),
            SparseFeature(name="hour", column=c["hour"]),
        ],
        labels=[LabelSpec(name="click", column=c["click"])],
        extras=["rid"],
    )


def _concat(batches: list) -> dict[str, torch.Tensor]:
    out = {
        "rid": torch.cat([b.extras["rid"] for b in batches]),
        "dense": torch.cat([b.dense for b in batches]),
        "click": torch.cat([b.labels["click"] for b in batches]),
    }
    for key in ("uid", "city", "hist", "hour"):
        jts = [b.sparse[key] for b in batches]
        out[key] = torch.cat([j.values() for j in jts])
        out[key + "_len"] = torch.cat([j.lengths() for j in jts])
    return out


def _write_jsonl(path, rows) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


@pytest.fixture
def expected(tmp_path) -> dict[str, torch.Tensor]:
    """The batches of the same rows stored flat (the `user.id` column named with a dot)."""
    pq.write_table(_flat(_nested_rows()), tmp_path / "flat.parquet")
    flat = _schema(age="age", city="city", hist="hist", hour="hour", click="click")
    return _concat(list(Reader(tmp_path / "flat.parquet", flat, 16)))


@pytest.mark.parametrize("fmt", ["parquet", "orc", "jsonl"])
def test_nested_fields_give_the_flat_batches(tmp_path, expected, fmt, monkeypatch):
    monkeypatch.setattr(jsonl, "BLOCK_BYTES", 1024)  # several blocks: types unified over them
    rows = _nested_rows()
    path = tmp_path / f"n.{fmt}"
    if fmt == "parquet":
        pq.write_table(_nested_table(rows), path)
    elif fmt == "orc":  # ORC has no uint64: the same 64 bits as int64
        for r in rows:
            if r["user"]:
                r["user"]["id"] = int(np.array(r["user"]["id"], np.uint64).view(np.int64))
        paorc.write_table(_nested_table(rows, pa.int64()), path)
    else:
        for r in rows:  # fields recis does not read, one of them changing type
            if r["user"]:
                r["user"]["extra"] = "text" if r["rid"] > 20 else r["rid"]
        _write_jsonl(path, rows)
    got = _concat(list(Reader(path, _schema(), 16, format=fmt)))
    for k, v in expected.items():
        assert torch.equal(got[k], v), (fmt, k)
    # the values themselves: a null struct has no id and the fill value, uint64 exact
    assert expected["rid"].tolist() == list(range(N))
    assert expected["uid_len"][4].item() == 0 and expected["dense"][4, 0].item() == -1.0
    assert expected["dense"][2, 0].item() == -1.0  # a null field inside a present struct
    assert expected["uid"][0].item() == np.array(BIG, np.uint64).view(np.int64).item()
    assert expected["hist_len"].tolist() == [i % 4 for i in range(N)]
    assert expected["click"].tolist() == [float(i % 2) for i in range(N)]


def test_paths_and_precedence():
    schema = pa.schema(
        [
            ("a.b", pa.int64()),
            ("a", pa.struct([("b", pa.string()), ("c", pa.struct([("d", pa.float32())]))])),
        ]
    )
    found = nested.paths(schema)
    assert found["a.b"] == (("a.b",), pa.int64())  # the top-level column wins
    assert found["a.c.d"] == (("a", "c", "d"), pa.float32())
    assert nested.read_columns(schema, ["a.c.d", "a.b", "zz"]) == ["a.c.d", "a.b"]
    assert nested.nest([(("a", "c", "d"), pa.int64()), (("x",), pa.string())]) == pa.schema(
        [("x", pa.string()), ("a", pa.struct([("c", pa.struct([("d", pa.int64())]))]))]
    )
    table = pa.table({"a.b": [1], "a": [{"b": "s", "c": {"d": 2.5}}]})
    got = nested.select(table, ["a.b", "a.c.d"])
    assert got.column_names == ["a.b", "a.c.d"] and got.to_pylist() == [{"a.b": 1, "a.c.d": 2.5}]


def test_missing_and_mistyped_paths_are_named(tmp_path):
    rows = _nested_rows()
    pq.write_table(_nested_table(rows), tmp_path / "n.parquet")
    with pytest.raises(DataError, match=r"n\.parquet.*user\.nope.*missing column"):
        Reader(tmp_path / "n.parquet", _schema(age="user.nope"), 16)
    with pytest.raises(DataError, match=r"user\.geo.*wrong type struct"):
        Reader(tmp_path / "n.parquet", _schema(age="user.geo"), 16)
    # JSON: a read nested field that is a string in one row and a number in another
    rows[30]["user"]["age"] = "old"
    _write_jsonl(tmp_path / "n.jsonl", rows)
    with pytest.raises(DataError, match=r"n\.jsonl, column 'user\.age', row 30 \(line 31\)"):
        list(Reader(tmp_path / "n.jsonl", _schema(), 16, format="jsonl"))


def test_split_quantiles_and_vocab_read_nested_paths(tmp_path):
    rows = _nested_rows()
    table = _nested_table(rows)
    pq.write_table(table, tmp_path / "n.parquet")
    _write_jsonl(tmp_path / "n.jsonl", rows)
    for name in ("n.parquet", "n.jsonl"):
        got = read_input(tmp_path / name, columns=["rid", "ctx.hour", "user.geo.city"])
        assert got.column_names == ["rid", "ctx.hour", "user.geo.city"], name
        assert got.column("ctx.hour").to_pylist() == [i % 24 for i in range(N)]
        cities = [None if i % 9 == 4 else f"city{i % 4}" for i in range(N)]
        assert got.column("user.geo.city").to_pylist() == cities
    with pytest.raises(DataError, match=r"user\.nope.*missing column"):
        read_input(tmp_path / "n.parquet", columns=["user.nope"])
    # a split keyed by a nested field: every hour in one part
    parts = split_table(table, "group", group="ctx.hour", fractions=(0.5, 0.5), seed=3)
    hours = [
        set(p.column("ctx").combine_chunks().field("hour").to_pylist()) for p in parts.values()
    ]
    assert not hours[0] & hours[1] and sum(p.num_rows for p in parts.values()) == N
    with pytest.raises(ConfigError, match="ctx.nope"):
        split_table(table, "group", group="ctx.nope")
    ages = [r["user"]["age"] for r in rows if r["user"] and r["user"]["age"] is not None]
    bounds = boundaries_from_files(tmp_path / "n.parquet", ["user.age"], buckets=4)
    want = np.quantile(ages, [0.25, 0.5, 0.75])
    assert bounds["user.age"] == sorted({float(f"{x:.6g}") for x in want})
    texts = list(read_texts(tmp_path / "n.parquet", ["user.geo.city"]))
    assert texts == [f"city{i % 4}" for i in range(N) if i % 9 != 4]


@pytest.mark.parametrize("fmt", ["parquet", "orc", "jsonl"])
def test_map_columns_are_weighted_ids(tmp_path, fmt, monkeypatch):
    """A Hive / Spark ``map<string, float>`` (tag -> score), top level or inside a struct:
    ``<map>.keys`` are the ids, ``<map>.values`` their weights, as the same rows stored as two
    aligned lists give. In JSON Lines the map is an object whose keys vary by row (several
    blocks, so the value type is unified over them: ints and floats)."""
    monkeypatch.setattr(jsonl, "BLOCK_BYTES", 512)
    rng = np.random.default_rng(2)
    tags = [
        None if i % 6 == 1 else [(f"t{k}", float(rng.random())) for k in range(i % 4)]
        for i in range(N)
    ]
    prefs = [[(int(k), float(k) / 2) for k in rng.integers(0, 99, i % 3)] for i in range(N)]
    scores = pa.map_(pa.string(), pa.float32())
    nested_table = pa.table(
        {
            "y": pa.array([float(i % 2) for i in range(N)]),
            "tag_scores": pa.array(tags, scores),
            "user": pa.array(
                [{"prefs": p} for p in prefs],
                pa.struct([("prefs", pa.map_(pa.int64(), pa.float64()))]),
            ),
        }
    )
    flat = pa.table(
        {
            "y": nested_table.column("y"),
            "tag": pa.array([None if t is None else [k for k, _ in t] for t in tags]),
            "w": pa.array(
                [None if t is None else [v for _, v in t] for t in tags], pa.list_(pa.float32())
            ),
            "pref": pa.array([[k for k, _ in p] for p in prefs], pa.list_(pa.int64())),
            "pw": pa.array([[v for _, v in p] for p in prefs]),
        }
    )

    def schema(tag, w, pref, pw) -> Schema:
        return Schema(
            sparse=[
                SparseFeature(name="tag", column=tag, weight_column=w, dtype="string"),
                # JSON object keys are strings: dtype int reads "12" as the id 12
                SparseFeature(name="pref", column=pref, weight_column=pw, dtype="int"),
            ],
            labels=[LabelSpec(name="y")],
        )

    pq.write_table(flat, tmp_path / "flat.parquet")
    if fmt == "jsonl":
        with open(tmp_path / "m.jsonl", "w") as out:
            for i, (t, p) in enumerate(zip(tags, prefs)):
                row = {"y": float(i % 2), "tag_scores": None if t is None else dict(t)}
                # whole-number scores as JSON integers, null scores left out of the map
                prefs_obj = {str(k): int(v) if v == int(v) else v for k, v in p}
                row["user"] = {"prefs": prefs_obj | {"gone": None}}
                out.write(json.dumps(row) + "\n")
    else:
        (paorc.write_table if fmt == "orc" else pq.write_table)(nested_table, tmp_path / f"m.{fmt}")
    want = list(Reader(tmp_path / "flat.parquet", schema("tag", "w", "pref", "pw"), 16))
    mapped = schema("tag_scores.keys", "tag_scores.values", "user.prefs.keys", "user.prefs.values")
    got = list(Reader(tmp_path / f"m.{fmt}", mapped, 16, format=fmt))
    for a, b in zip(got, want, strict=True):
        for key in ("tag", "pref"):
            ja, jb = a.sparse[key], b.sparse[key]
            assert torch.equal(ja.values(), jb.values()) and torch.equal(ja.lengths(), jb.lengths())
            assert torch.equal(ja.weights(), jb.weights())
    lengths = torch.cat([b.sparse["tag"].lengths() for b in got]).tolist()
    assert lengths == [0 if i % 6 == 1 else i % 4 for i in range(N)]  # a null map: no id
    weights = torch.cat([b.sparse["tag"].weights() for b in got])
    assert weights.tolist() == pytest.approx([v for t in tags if t for _, v in t])


def test_a_map_named_whole_says_how_to_name_its_keys(tmp_path):
    scores = pa.array([[("a", 1.0)]], pa.map_(pa.string(), pa.float32()))
    pq.write_table(pa.table({"y": [1.0], "m": scores}), tmp_path / "m.parquet")
    schema = Schema(sparse=[SparseFeature(name="m")], labels=[LabelSpec(name="y")])
    with pytest.raises(DataError, match=r"column 'm'.*column m\.keys .*weight_column m\.values"):
        Reader(tmp_path / "m.parquet", schema, 4)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_fields_of_repeated_records_are_lists(tmp_path, fmt, monkeypatch):
    """BigQuery's REPEATED RECORD / a JSON array of objects (``items: [{id, qty}, ...]``):
    ``items.id`` is the row's list of ids, ``items.qty`` the aligned weights."""
    monkeypatch.setattr(jsonl, "BLOCK_BYTES", 512)
    rng = np.random.default_rng(3)
    items = [
        None
        if i % 8 == 5
        else [{"id": int(rng.integers(0, 99)), "qty": float(k + 1)} for k in range(i % 4)]
        for i in range(N)
    ]
    rows = [
        {"y": float(i % 2), "order": {"items": it, "shop": f"s{i % 3}"}}
        for i, it in enumerate(items)
    ]
    flat = pa.table(
        {
            "y": [r["y"] for r in rows],
            "ids": pa.array(
                [None if it is None else [x["id"] for x in it] for it in items],
                pa.list_(pa.int64()),
            ),
            "qty": pa.array(
                [None if it is None else [x["qty"] for x in it] for it in items],
                pa.list_(pa.float64()),
            ),
        }
    )
    pq.write_table(flat, tmp_path / "flat.parquet")
    path = tmp_path / f"o.{fmt}"
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        _write_jsonl(path, rows)

    def schema(ids: str, qty: str) -> Schema:
        return Schema(
            sparse=[SparseFeature(name="item", column=ids, weight_column=qty)],
            labels=[LabelSpec(name="y")],
        )

    want = list(Reader(tmp_path / "flat.parquet", schema("ids", "qty"), 16))
    got = list(Reader(path, schema("order.items.id", "order.items.qty"), 16, format=fmt))
    for a, b in zip(got, want, strict=True):
        ja, jb = a.sparse["item"], b.sparse["item"]
        assert torch.equal(ja.values(), jb.values()) and torch.equal(ja.lengths(), jb.lengths())
        assert torch.equal(ja.weights(), jb.weights())
    lengths = torch.cat([b.sparse["item"].lengths() for b in got]).tolist()
    assert lengths == [0 if i % 8 == 5 else i % 4 for i in range(N)]
    if fmt == "jsonl":  # a uint64 id in an array of objects: refused, not rounded
        rows[7]["order"]["items"] = [{"id": 2**63 + 1, "qty": 1.0}]  # a uint64
        _write_jsonl(path, rows)
        with pytest.raises(
            DataError, match=r"column 'order\.items\.id'.*write these ids as strings"
        ):
            Reader(path, schema("order.items.id", "order.items.qty"), 16, format=fmt)


def test_serving_requests_read_the_same_paths_from_nested_json():
    """A model trained on struct columns is served nested JSON requests: the dotted paths
    resolve in the request objects as in the files (flat keys of the same name also work)."""
    from recis.export.rows import request_batch

    schema = Schema(
        dense=[DenseFeature(name="age", column="user.age", fill=-1.0)],
        sparse=[
            SparseFeature(name="city", column="user.geo.city", dtype="string"),
            SparseFeature(name="item", column="order.items.id", weight_column="order.items.qty"),
            SparseFeature(
                name="tag", column="tags.keys", weight_column="tags.values", dtype="string"
            ),
        ],
    )
    nested_rows = [
        {
            "user": {"age": 31, "geo": {"city": "x"}},
            "order": {"items": [{"id": 4, "qty": 2.0}]},
            "tags": {"a": 0.5, "gone": None},  # a null entry is left out, as in files
        },
        {"user": None, "order": {"items": []}, "tags": {}},
    ]
    flat_rows = [
        {
            "user.age": 31,
            "user.geo.city": "x",
            "order.items.id": [4],
            "order.items.qty": [2.0],
            "tags.keys": ["a"],
            "tags.values": [0.5],
        },
        {
            "user.age": None,
            "user.geo.city": None,
            "order.items.id": [],
            "order.items.qty": [],
            "tags.keys": [],
            "tags.values": [],
        },
    ]
    got, want = request_batch(nested_rows, schema, "fill"), request_batch(flat_rows, schema, "fill")
    assert got.dense.flatten().tolist() == want.dense.flatten().tolist() == [31.0, -1.0]
    for key in ("city", "item", "tag"):
        assert got.sparse[key].values().tolist() == want.sparse[key].values().tolist(), key
        assert got.sparse[key].lengths().tolist() == want.sparse[key].lengths().tolist(), key
        assert got.sparse[key].weights().tolist() == want.sparse[key].weights().tolist(), key
    assert got.sparse["item"].weights().tolist()[:1] == [2.0]


def test_keyed_json_objects_in_split_and_their_errors(tmp_path):
    """``read_input`` (recis split) reads a keyed object's keys and values too; an object whose
    values are objects, or a field that is not an object, is named."""
    f = tmp_path / "k.jsonl"
    f.write_text('{"u": 1, "s": {"a": 1, "b": 2.5}}\n{"u": 2, "s": {}}\n{"u": 3, "s": null}\n')
    t = read_input(f, columns=["u", "s.keys", "s.values"])
    assert t.column("s.keys").to_pylist() == [["a", "b"], [], None]
    assert t.column("s.values").to_pylist() == [[1.0, 2.5], [], None]
    schema = Schema(
        sparse=[SparseFeature(name="s", column="s.keys", weight_column="s.values")],
        labels=[LabelSpec(name="u", kind="real")],
    )
    f.write_text('{"u": 1, "s": {"a": {"deep": 1}}}\n')
    with pytest.raises(DataError, match=r"column 's'.*value for 'a' is struct"):
        Reader(f, schema, 4, format="jsonl")
    f.write_text('{"u": 1, "s": 5}\n')
    with pytest.raises(DataError, match=r"column 's': JSON int64, not an object"):
        Reader(f, schema, 4, format="jsonl")
