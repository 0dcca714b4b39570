"""JSON Lines read unchanged: the same batches as parquet, types unified over blocks, uint64
ids exact, malformed lines and mixed types named by file, row and line, resume, split."""

from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recis.errors import DataError
from recis.features import DenseFeature, LabelSpec, Schema, SparseFeature
from recis.io import Reader, jsonl
from recis.io.split import read_input

N = 60

SCHEMA = Schema(
    dense=[DenseFeature(name="x", fill=-1.0)],
    sparse=[
        SparseFeature(name="uid"),
        SparseFeature(name="cat", dtype="string"),
        SparseFeature(name="tags", dtype="string", table="tag"),
    ],
    labels=[LabelSpec(name="click")],
    extras=["rid"],
)


def _rows() -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N):
        row = {
            "rid": i,
            "click": float(rng.integers(0, 2)),
            "x": None if i % 9 == 3 else round(float(rng.normal()), 6),
            "uid": int(rng.integers(-(2**62), 2**62)),
            "cat": f"c{i % 5}",
            "tags": [f"t{j}" for j in range(i % 4)],
            "note": {"free": "text", "n": i},  # a field recis does not read
        }
        if i % 11 == 5:
            del row["uid"]  # a missing field is a null: no id
        rows.append(row)
    rows[40]["x"] = 2  # an integer where the first block had floats
    return rows


def _write(path, rows, blank_every: int = 0, opener=open) -> None:
    with opener(path, "wt", encoding="utf-8") as f:
        for i, r in enumerate(rows):
            f.write(json.dumps(r) + "\n")
            if blank_every and i % blank_every == 0:
                f.write("\n")


def _concat(batches: list) -> dict[str, torch.Tensor]:
    out = {
        "rid": torch.cat([b.extras["rid"] for b in batches]),
        "dense": torch.cat([b.dense for b in batches]),
        "click": torch.cat([b.labels["click"] for b in batches]),
    }
    for key in ("uid", "cat", "tags"):
        jts = [b.sparse[key] for b in batches]
        out[key] = torch.cat([j.values() for j in jts])
        out[key + "_len"] = torch.cat([j.lengths() for j in jts])
    return out


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of ~1 KiB: a 60-row file spans several, so types are unified across them; with
    more than one core pyarrow parses pieces of ~512 bytes of each in parallel."""
    monkeypatch.setattr(jsonl, "BLOCK_BYTES", 1024)
    monkeypatch.setattr(jsonl, "PIECE_BYTES", 512)


def test_jsonl_gives_the_parquet_batches(tmp_path, small_blocks):
    rows = _rows()
    table = pa.Table.from_pylist([{k: v for k, v in r.items() if k != "note"} for r in rows])
    pq.write_table(table, tmp_path / "d.parquet")
    expected = _concat(list(Reader(tmp_path / "d.parquet", SCHEMA, 16)))
    _write(tmp_path / "d.jsonl", rows, blank_every=7)  # blank lines are not rows
    _write(tmp_path / "d.jsonl.gz", rows, opener=gzip.open)
    for name in ("d.jsonl", "d.jsonl.gz"):
        got = _concat(list(Reader(tmp_path / name, SCHEMA, 16, format="jsonl")))
        for k, v in expected.items():
            assert torch.equal(got[k], v), (name, k)
    assert expected["rid"].tolist() == list(range(N))
    assert expected["dense"][3, 0].item() == -1.0  # null -> fill
    assert expected["dense"][40, 0].item() == 2.0
    assert expected["uid_len"][5].item() == 0 and expected["uid_len"][4].item() == 1
    assert expected["tags_len"].tolist() == [i % 4 for i in range(N)]


def test_uint64_ids_above_2_63_stay_exact(tmp_path, small_blocks):
    """A JSON integer above int64 is a double to pyarrow (2**64-1 and 2**64-2 would be one
    id); recis reads it as uint64, also when earlier blocks held only small ids."""
    big = [2**63, 2**63 + 1, 2**64 - 2, 2**64 - 1]
    rows = [{"uid": i, "y": 0.0, "pad": "p" * 40} for i in range(40)]
    rows += [{"uid": u, "y": 1.0, "pad": "p"} for u in big]
    _write(tmp_path / "a.jsonl", rows)
    schema = Schema(sparse=[SparseFeature(name="uid")], labels=[LabelSpec(name="y")])
    ids = torch.cat(
        [b.sparse["uid"].values() for b in Reader(tmp_path / "a.jsonl", schema, 64, format="jsonl")]
    )
    want = np.array(list(range(40)) + big, np.uint64).view(np.int64).tolist()
    assert ids.tolist() == want
    assert len(set(ids.tolist())) == 44


def test_malformed_line_names_file_row_and_line(tmp_path, small_blocks):
    rows = _rows()
    _write(tmp_path / "d.jsonl", rows[:30])
    with open(tmp_path / "d.jsonl", "a") as f:
        f.write("\n")  # a blank line: line 32 is the next row's line
        f.write('{"rid": 30, "click": 1.0, "x": 0.5,}\n')  # trailing comma
        for r in rows[31:]:
            f.write(json.dumps(r) + "\n")
    with pytest.raises(DataError) as err:
        list(Reader(tmp_path / "d.jsonl", SCHEMA, 16, format="jsonl"))
    msg = str(err.value)
    assert "d.jsonl" in msg and "row 30" in msg and "line 32" in msg and "\n" not in msg


def test_skip_bad_lines_quarantines_them(tmp_path, small_blocks):
    rows = _rows()
    lines = [json.dumps(r) for r in rows]
    lines[12] = "[1, 2, 3]"  # valid JSON, not an object
    lines[47] = '{"rid": 47, "click": '  # cut off
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    quarantine = tmp_path / "bad.jsonl"
    reader = Reader(
        tmp_path / "d.jsonl",
        SCHEMA,
        16,
        format="jsonl",
        on_bad_row="skip",
        quarantine=quarantine,
        max_bad_fraction=0.1,
    )
    rids = torch.cat([b.extras["rid"] for b in reader]).tolist()
    assert rids == [i for i in range(N) if i not in (12, 47)]
    bad = [json.loads(x) for x in quarantine.read_text().splitlines()]
    assert sorted((b["row"], b["line"]) for b in bad) == [(12, 13), (47, 48)]


def test_a_column_that_is_a_string_and_a_number_is_named(tmp_path, small_blocks):
    rows = [{"uid": i, "y": 0.0, "pad": "p" * 40} for i in range(40)]
    rows.append({"uid": "u-40", "y": 1.0})
    _write(tmp_path / "a.jsonl", rows)
    schema = Schema(sparse=[SparseFeature(name="uid")], labels=[LabelSpec(name="y")])
    with pytest.raises(DataError) as err:
        Reader(tmp_path / "a.jsonl", schema, 8, format="jsonl")
    msg = str(err.value)
    assert "a.jsonl" in msg and "uid" in msg and "string" in msg


def test_a_field_recis_does_not_read_may_change_type(tmp_path):
    """``note`` is a number, then a string, in one block: pyarrow cannot infer it, recis does
    not need it."""
    rows = [{"rid": 0, "y": 1.0, "note": 3}, {"rid": 1, "y": 0.0, "note": "three"}]
    _write(tmp_path / "a.jsonl", rows)
    schema = Schema(labels=[LabelSpec(name="y")], extras=["rid"])
    (b,) = list(Reader(tmp_path / "a.jsonl", schema, 8, format="jsonl"))
    assert b.extras["rid"].tolist() == [0, 1] and b.labels["y"].tolist() == [1.0, 0.0]


def test_a_json_array_file_is_refused_with_a_hint(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"y": 1.0}, {"y": 0.0}]))
    with pytest.raises(DataError, match="one object per line") as err:
        Reader(tmp_path / "a.json", Schema(labels=[LabelSpec(name="y")]), 8, format="jsonl")
    assert "line 1" in str(err.value)


def test_resume_mid_file_continues_with_the_same_rows(tmp_path, small_blocks):
    _write(tmp_path / "d.jsonl", _rows())
    whole = [b.extras["rid"] for b in Reader(tmp_path / "d.jsonl", SCHEMA, 8, format="jsonl")]
    first = Reader(tmp_path / "d.jsonl", SCHEMA, 8, format="jsonl")
    it = iter(first)
    head = [next(it).extras["rid"] for _ in range(3)]
    state = first.state_dict()
    again = Reader(tmp_path / "d.jsonl", SCHEMA, 8, format="jsonl")
    again.load_state_dict(state)
    rest = [b.extras["rid"] for b in again]
    assert torch.cat(head + rest).tolist() == torch.cat(whole).tolist() == list(range(N))


def test_split_and_read_table_take_jsonl(tmp_path, small_blocks):
    rows = _rows()
    _write(tmp_path / "d.jsonl", rows)
    table = read_input(tmp_path / "d.jsonl", columns=["rid", "x", "uid"])
    assert table.column("rid").to_pylist() == list(range(N))
    assert pa.types.is_floating(table.schema.field("x").type)  # 2 in a later block: a double
    x = table.column("x").to_pylist()
    assert (
        x[40] == 2.0
        and x[3] is None
        and all(
            a == b["x"] or (a is None and b["x"] is None) or math.isclose(a, b["x"])
            for a, b in zip(x, rows)
        )
    )


def test_config_format_jsonl_and_cli_split(tmp_path, capsys):
    from recis.cli import main
    from recis.config import DataConfig
    from recis.io import reader_from_config

    rows = _rows()
    _write(tmp_path / "log.jsonl", rows)
    schema = {  # as a YAML config writes it
        "labels": [{"name": "click"}],
        "dense": [{"name": "x", "fill": -1.0}],
        "sparse": [{"name": "uid"}, {"name": "cat", "dtype": "string"}],
        "extras": ["rid"],
    }
    data = DataConfig(
        train=str(tmp_path / "log.jsonl"), format="jsonl", batch_size=25, schema=schema
    )
    reader = reader_from_config(data, data.train, train=False)
    assert [b.batch_size for b in reader] == [25, 25, 10]
    out = tmp_path / "out"
    assert main(["split", str(tmp_path / "log.jsonl"), "--out", str(out), "--by", "random"]) == 0
    assert "test:" in capsys.readouterr().out
    parts = [pq.read_table(out / f"{p}.parquet") for p in ("train", "test")]
    assert sorted(sum((t.column("rid").to_pylist() for t in parts), [])) == list(range(N))
