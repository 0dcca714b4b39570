"""Every bad input stops with a DataError naming the file (and column and row when there is one)."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recis.errors import DataError
from recis.features import DenseFeature, LabelSpec, Schema, SparseFeature
from recis.io import Reader

SCHEMA = Schema(
    dense=[DenseFeature(name="x")],
    sparse=[SparseFeature(name="ids")],
    labels=[LabelSpec(name="y")],
)


def _write(path, n: int = 40, **override) -> str:
    cols = {
        "x": np.arange(n, dtype=np.float64),
        "ids": np.arange(n, dtype=np.int64),
        "y": np.zeros(n, dtype=np.float32),
    }
    cols.update(override)
    pq.write_table(pa.table(cols), path, row_group_size=16, write_page_checksum=True)
    return str(path)


def _read(path, schema: Schema = SCHEMA, **kw) -> list:
    return list(Reader(path, schema, 8, **kw))


def test_missing_column(tmp_path):
    f = _write(tmp_path / "a.parquet")
    schema = Schema(dense=[DenseFeature(name="price")], labels=[LabelSpec(name="y")])
    with pytest.raises(DataError, match=r"a\.parquet, column 'price': missing column") as e:
        _read(f, schema)
    assert e.value.path == f and e.value.column == "price"


def test_wrong_type(tmp_path):
    f = _write(tmp_path / "a.parquet", x=[[f"s{i}"] for i in range(40)])
    with pytest.raises(
        DataError, match=r"a\.parquet, column 'x': wrong type list<element: string>"
    ):
        _read(f)
    # a string column may hold numbers as text (a Hive STRING column): words are bad rows
    f = _write(tmp_path / "b.parquet", x=[f"s{i}" for i in range(40)])
    with pytest.raises(DataError, match=r"b\.parquet, column 'x', row 0.*not a number"):
        _read(f)


def test_ids_in_a_float_column(tmp_path):
    """pandas writes integer ids with a missing value as float64 with NaN: whole numbers are
    the ids, NaN no id; a fraction, or a value past what the float holds exactly, is a bad
    row naming it."""
    ids = np.arange(40, dtype=np.float64)
    ids[3] = np.nan
    batches = _read(_write(tmp_path / "a.parquet", ids=ids))
    got = torch.cat([b.sparse["ids"].values() for b in batches]).tolist()
    assert got == [i for i in range(40) if i != 3]
    assert torch.cat([b.sparse["ids"].lengths() for b in batches]).tolist()[2:5] == [1, 0, 1]
    for bad, what in [
        (21.5, r"is not a whole number \(value 21.5\)"),
        (2.0**53 + 2, r"past 2\*\*53, .*set dtype: string .*\(value 9007199254740994.0\)"),
        (np.inf, r"past 2\*\*53.*\(value inf\)"),
    ]:
        ids[21] = bad
        f = _write(tmp_path / "b.parquet", ids=ids)
        with pytest.raises(DataError, match=rf"column 'ids', row 21: id in a float column {what}"):
            _read(f)
    f32 = _write(tmp_path / "c.parquet", ids=pa.array(np.full(40, 2.0**24 + 2, np.float32)))
    with pytest.raises(DataError, match=r"row 0: id in a float column past 2\*\*24"):
        _read(f32)


@pytest.mark.parametrize("bad", ["null", "nan"])
def test_null_or_nan_label(tmp_path, bad):
    y = np.zeros(40, dtype=np.float32)
    y[21] = np.nan
    label = pa.array(y, mask=np.isnan(y)) if bad == "null" else pa.array(y)
    f = _write(tmp_path / "a.parquet", y=label)
    with pytest.raises(DataError, match=r"a\.parquet, column 'y', row 21: null or NaN label"):
        _read(f, shuffle=True, seed=3)


def test_nan_dense_value_fill_or_raise(tmp_path):
    x = np.arange(40, dtype=np.float64)
    x[33] = np.nan
    f = _write(tmp_path / "a.parquet", x=x)
    dense = np.concatenate([b.dense[:, 0].numpy() for b in _read(f)])
    assert dense[33] == 0.0 and dense[34] == 34.0  # fill (the default policy)
    with pytest.raises(
        DataError, match=r"column 'x', row 33: null, NaN or inf dense value \(value nan\)"
    ):
        _read(f, nan_policy="raise")
    strict = Schema(dense=[DenseFeature(name="x", on_nan="raise")], labels=SCHEMA.labels)
    with pytest.raises(DataError, match="row 33"):
        _read(f, strict)


def test_empty_file(tmp_path):
    (tmp_path / "empty.parquet").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.parquet: empty file"):
        _read(tmp_path / "empty.parquet")
    f = _write(tmp_path / "norows.parquet", n=0)
    with pytest.raises(DataError, match=r"norows\.parquet: empty file \(no rows\)"):
        _read(f)


def test_truncated_file(tmp_path):
    f = _write(tmp_path / "a.parquet")
    with open(f, "rb") as src:
        data = src.read()
    with open(f, "wb") as out:
        out.write(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"a\.parquet: corrupt or truncated file"):
        _read(f)


def test_corrupt_bytes_inside_a_file(tmp_path):
    f = tmp_path / "a.parquet"
    pq.write_table(
        pa.table({"x": np.arange(4000.0), "ids": np.arange(4000), "y": np.zeros(4000)}),
        f,
        compression="snappy",
    )
    data = bytearray(f.read_bytes())
    data[64:2000] = os.urandom(1936)  # inside the first data pages, footer intact
    f.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"a\.parquet: corrupt or truncated file"):
        _read(f)


def test_unreadable_path(tmp_path):
    with pytest.raises(DataError, match=r"nope\.parquet: unreadable path"):
        _read(tmp_path / "nope.parquet")
    with pytest.raises(DataError, match="glob matched no file"):
        _read(str(tmp_path / "*.parquet"))


def test_csv_line_with_missing_fields_names_file_and_line(tmp_path):
    (tmp_path / "a.csv").write_text("x,ids,y\n1.0,1,0\n2.0,2\n3.0,3,1\n")
    # row 1 is the second data row (0-based, header not counted); line 3 counts the header
    match = r"a\.csv, row 1 \(line 3\): bad line: Expected 3 columns, got 2"
    with pytest.raises(DataError, match=match):
        _read(tmp_path / "a.csv", format="csv")


def test_on_bad_row_skip_counts_and_quarantines(tmp_path):
    y = np.zeros(40, dtype=np.float32)
    y[[2, 30]] = np.nan
    x = np.arange(40, dtype=np.float64)
    x[17] = np.nan
    f = _write(tmp_path / "a.parquet", y=y, x=x)
    q = tmp_path / "quarantine.jsonl"
    r = Reader(
        f,
        SCHEMA,
        8,
        on_bad_row="skip",
        quarantine=q,
        nan_policy="raise",
        shuffle=True,
        max_bad_fraction=0.1,
    )
    batches = list(r)
    assert r.bad_rows_report() == {
        "y: null or NaN label": 2,
        "x: null, NaN or inf dense value": 1,
    }
    ids = sorted(int(v) for b in batches for v in b.sparse["ids"].values())
    assert ids == [i for i in range(40) if i not in (2, 17, 30)]
    assert [b.batch_size for b in batches] == [8, 8, 8, 8, 5] and r.skipped == 3
    lines = [json.loads(line) for line in q.read_text().splitlines()]
    assert sorted((d["row"], d["reason"]) for d in lines) == [
        (2, "y: null or NaN label"),
        (17, "x: null, NaN or inf dense value"),
        (30, "y: null or NaN label"),
    ]
    assert all(d["file"] == f and d["values"]["ids"] == d["row"] for d in lines)


def test_csv_bad_lines_skipped_to_quarantine(tmp_path):
    (tmp_path / "a.csv").write_text("x,ids,y\n1.0,1,0\n2.0,2\n3.0,3,1\n")
    q = tmp_path / "q.jsonl"
    r = Reader(
        tmp_path / "a.csv",
        SCHEMA,
        8,
        format="csv",
        on_bad_row="skip",
        quarantine=q,
        max_bad_fraction=0.5,
    )
    (b,) = list(r)
    assert b.sparse["ids"].values().tolist() == [1, 3]
    (line,) = [json.loads(x) for x in q.read_text().splitlines()]
    assert line["text"] == "2.0,2" and line["file"].endswith("a.csv")
    assert (line["row"], line["line"], line["reason"]) == (1, 3, "bad line")
    assert r.bad_rows_report() == {"bad line": 1} and r.skipped == 1


def test_files_that_disagree_on_a_column_type(tmp_path):
    _write(tmp_path / "a.parquet")
    _write(tmp_path / "b.parquet", ids=pa.array([[i] for i in range(40)], pa.list_(pa.int64())))
    with pytest.raises(DataError, match=r"b\.parquet, column 'ids': type list<.*int64> does not"):
        _read(tmp_path)
