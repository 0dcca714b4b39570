"""Wrong data is never silently accepted (issue 16, "Data" and parquet integrity).

Real files written with pyarrow (parquet, ORC, CSV), real readers, real processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recis.cli import main
from recis.errors import DataError, OutputError
from recis.features import DenseFeature, LabelSpec, Schema, SparseFeature
from recis.io import Reader

ROOT = Path(__file__).resolve().parents[2]
N = 40


def _write(path: Path, n: int = N, row_group_size: int = 16, **override) -> Path:
    cols = {
        "x": np.arange(n, dtype=np.float64),
        "ids": np.arange(n, dtype=np.int64),
        "y": np.zeros(n, dtype=np.float64),
    }
    cols.update(override)
    pq.write_table(pa.table(cols), path, row_group_size=row_group_size, write_page_checksum=True)
    return path


def _schema(label: LabelSpec | None = None, **dense) -> Schema:
    return Schema(
        dense=[DenseFeature(name="x", **dense)],
        sparse=[SparseFeature(name="ids")],
        labels=[label or LabelSpec(name="y")],
    )


# -- labels ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, value, what",
    [
        ({}, 2.0, "label out of range for kind binary"),
        ({}, -1.0, "label out of range for kind binary"),
        ({}, 0.5, "label out of range for kind binary"),
        ({"kind": "soft"}, 1.5, r"label out of range for kind soft \(expected \[0, 1\]\)"),
        ({"kind": "soft"}, -0.1, "label out of range for kind soft"),
        ({"kind": "graded", "max": 2}, 3.0, "label out of range for kind graded"),
        ({"kind": "graded", "max": 2}, 1.5, "label out of range for kind graded"),
        ({}, np.inf, "inf label"),
        ({"kind": "real"}, -np.inf, "inf label"),
        ({"kind": "real", "positive_at": 4.0}, np.inf, "inf label"),
        ({"kind": "real"}, 1e300, "label past float32's range"),
        ({}, np.nan, "null or NaN label"),
    ],
)
def test_bad_label_for_its_kind(tmp_path, spec, value, what):
    y = np.zeros(N)
    y[29] = value
    f = _write(tmp_path / "a.parquet", y=y)
    schema = _schema(LabelSpec(name="y", **spec))
    with pytest.raises(DataError, match=rf"a\.parquet, column 'y', row 29: {what}") as e:
        list(Reader(f, schema, 8, shuffle=True, seed=1))
    assert (e.value.path, e.value.column, e.value.row) == (str(f), "y", 29)


@pytest.mark.parametrize(
    "spec, values, expected",
    [
        ({"kind": "soft"}, [0.0, 0.25, 1.0], [0.0, 0.25, 1.0]),
        ({"kind": "graded", "max": 2}, [0.0, 1.0, 2.0], [0.0, 1.0, 2.0]),
        ({"kind": "real"}, [-3.5, 0.0, 1e6], [-3.5, 0.0, 1e6]),
        # MovieLens ratings binarized at 4: the label a CTR task trains on
        ({"kind": "real", "positive_at": 4.0}, [3.5, 4.0, 5.0], [0.0, 1.0, 1.0]),
        ({"kind": "graded", "max": 2, "positive_at": 2}, [2.0, 1.0, 0.0], [1.0, 0.0, 0.0]),
    ],
)
def test_valid_labels_of_each_kind(tmp_path, spec, values, expected):
    f = _write(tmp_path / "a.parquet", n=3, y=np.array(values))
    (b,) = list(Reader(f, _schema(LabelSpec(name="y", **spec)), 8))
    assert b.labels["y"].tolist() == pytest.approx(expected)


def test_label_spec_is_checked_when_built():
    from recis.config import validate
    from recis.errors import ConfigError

    with pytest.raises(ConfigError, match=r"labels\.y\.max: kind graded needs the top grade"):
        validate(LabelSpec, {"name": "y", "kind": "graded"})
    with pytest.raises(ConfigError, match="kind"):
        validate(LabelSpec, {"name": "y", "kind": "ordinal"})


# -- dense values, weights ---------------------------------------------------------------


def test_inf_dense_value_follows_the_nan_policy(tmp_path):
    x = np.arange(N, dtype=np.float64)
    x[11], x[12], x[14] = np.inf, -np.inf, -1e300  # 1e300: inf as float32
    f = _write(tmp_path / "a.parquet", x=x)
    dense = np.concatenate([b.dense[:, 0].numpy() for b in Reader(f, _schema(fill=-1.0), 8)])
    assert dense[11] == -1.0 and dense[12] == -1.0 and dense[13] == 13.0 and dense[14] == -1.0
    with pytest.raises(DataError, match=r"column 'x', row 11: null, NaN or inf dense value"):
        list(Reader(f, _schema(), 8, nan_policy="raise"))
    with pytest.raises(DataError, match="row 11"):
        list(Reader(f, _schema(on_nan="raise"), 8))


def test_inf_weight_is_a_bad_row(tmp_path):
    w = np.ones(N)
    w[5] = np.inf
    f = _write(tmp_path / "a.parquet", w=w)
    schema = Schema(
        sparse=[SparseFeature(name="ids", weight_column="w")], labels=[LabelSpec(name="y")]
    )
    with pytest.raises(DataError, match=r"column 'w', row 5: null, NaN or inf weight"):
        list(Reader(f, schema, 8))


# -- non-UTF-8 CSV -----------------------------------------------------------------------


def test_non_utf8_csv_is_one_line_naming_file_column_row(tmp_path):
    f = tmp_path / "a.csv"
    f.write_bytes(b"x,ids,y\n1.0,1,0\n2.0,\xff\xfe,1\n3.0,3,0\n")
    # ids under dtype int are read as text: the bad bytes are found on their row
    schema = Schema(
        dense=[DenseFeature(name="x")],
        sparse=[SparseFeature(name="ids", dtype="int")],
        labels=[LabelSpec(name="y")],
    )
    with pytest.raises(DataError, match=r"a\.csv, column 'ids', row 1 \(line 3\): ") as e:
        list(Reader(f, schema, 8, format="csv"))
    assert "\n" not in str(e.value) and "\ufffd" not in str(e.value)
    # an integer column inferred from bytes that are not UTF-8: refused when the reader is built
    match = r"a\.csv, column 'ids': wrong type binary \(bytes that are not UTF-8 text\)"
    with pytest.raises(DataError, match=match) as e:
        Reader(f, _schema(), 8, format="csv")
    assert "\n" not in str(e.value)


def test_non_utf8_bytes_in_a_later_csv_block(tmp_path):
    """Types are inferred from the first block; a bad value further on names its row too."""
    f = tmp_path / "a.csv"
    n = 300_000  # past the reader's 4 MiB block
    lines = [b"x,ids,y"] + [b"%d.5,%d,0" % (i, i) for i in range(n)]
    lines[n - 2] = b"1.5,\xff\xfe,0"  # data row n - 3, physical line n - 1
    f.write_bytes(b"\n".join(lines) + b"\n")
    assert f.stat().st_size > (1 << 22)
    with pytest.raises(DataError, match=rf"column 'ids', row {n - 3} \(line {n - 1}\): ") as e:
        list(Reader(f, _schema(), 65536, format="csv", prefetch=0))
    assert "\n" not in str(e.value)


# -- schema drift, checked before the first batch ----------------------------------------


@pytest.mark.parametrize(
    "override, match",
    [
        ({"x": None}, "column 'x': missing column"),
        # (a dense column may be numbers as text, but not text here and numbers elsewhere)
        ({"x": [f"s{i}" for i in range(N)]}, "column 'x': type string does not match double"),
        ({"ids": np.arange(N).astype(np.uint64)}, "column 'ids': ids are uint64 here but"),
        ({"ids": pa.array([[i] for i in range(N)], pa.list_(pa.int64()))}, "column 'ids': type"),
        ({"ids": [str(i) for i in range(N)]}, "column 'ids': type string does not match int64"),
    ],
)
def test_drift_in_the_last_file_stops_before_the_first_batch(tmp_path, override, match):
    for i in range(3):
        _write(tmp_path / f"p{i}.parquet")
    cols = {k: v for k, v in override.items() if v is not None}
    last = _write(tmp_path / "p3.parquet", **cols)
    if override.get("x", 0) is None:
        t = pq.read_table(last).drop_columns(["x"])
        pq.write_table(t, last, write_page_checksum=True)
    with pytest.raises(DataError, match=rf"p3\.parquet, {match}") as e:
        Reader(tmp_path, _schema(), 8, shuffle=True)  # built, not iterated
    assert e.value.path == str(last)


def test_drift_in_the_last_csv_file(tmp_path):
    for i in range(2):
        (tmp_path / f"p{i}.csv").write_text("x,ids,y\n1.0,1,0\n2.0,2,1\n")
    (tmp_path / "p2.csv").write_text("x,ids,y\n1.0,1,0\nabc,2,1\n")
    with pytest.raises(DataError, match=r"p2\.csv, column 'x': type string does not match double"):
        Reader(tmp_path, _schema(), 8, format="csv")


# -- row numbers -------------------------------------------------------------------------


def test_one_row_convention_in_csv_messages_and_quarantine(tmp_path):
    """0-based data rows (header not counted) everywhere; CSV also gives the physical line."""
    f = tmp_path / "a.csv"
    f.write_text("x,ids,y\n1.0,1,0\n2.0,2\n3.0,3,\n4.0,4,1\n5.0,5,1\n")
    q = tmp_path / "q.jsonl"
    r = Reader(f, _schema(), 8, format="csv", on_bad_row="skip", quarantine=q, max_bad_fraction=1)
    (b,) = list(r)
    assert b.sparse["ids"].values().tolist() == [1, 4, 5]
    records = sorted(
        (d["row"], d["line"], d["reason"]) for d in map(json.loads, q.read_text().splitlines())
    )
    assert records == [(1, 3, "bad line"), (2, 4, "y: null or NaN label")]
    with pytest.raises(DataError, match=r"a\.csv, row 1 \(line 3\): bad line"):
        Reader(f, _schema(), 8, format="csv")
    f.write_text("x,ids,y\n1.0,1,0\n3.0,3,\n")
    with pytest.raises(DataError, match=r"a\.csv, column 'y', row 1 \(line 3\): null or NaN"):
        list(Reader(f, _schema(), 8, format="csv"))


def test_csv_line_numbers_count_blank_lines(tmp_path):
    """Arrow skips blank lines (and numbers lines without them): messages give the real line."""
    f = tmp_path / "a.csv"
    f.write_text("x,ids,y\n1.0,1,0\n\n2.0,2\n\r\n3.0,3,\n4.0,4,1\n")
    q = tmp_path / "q.jsonl"
    r = Reader(f, _schema(), 8, format="csv", on_bad_row="skip", quarantine=q, max_bad_fraction=1)
    (b,) = list(r)
    assert b.sparse["ids"].values().tolist() == [1, 4]
    records = sorted(
        (d["row"], d["line"], d["reason"]) for d in map(json.loads, q.read_text().splitlines())
    )
    assert records == [(1, 4, "bad line"), (2, 6, "y: null or NaN label")]
    with pytest.raises(DataError, match=r"a\.csv, row 1 \(line 4\): bad line"):
        Reader(f, _schema(), 8, format="csv")
    # the reviewer's file: the bad value is on line 5
    g = tmp_path / "b.csv"
    g.write_text("y,d\n1,0.5\n\n0,0.1\n2,0.3\n")
    schema = Schema(dense=[DenseFeature(name="d")], labels=[LabelSpec(name="y")])
    with pytest.raises(DataError, match=r"b\.csv, column 'y', row 2 \(line 5\): "):
        list(Reader(g, schema, 8, format="csv"))


# -- skip accounting ---------------------------------------------------------------------


def _bad_file(tmp_path: Path, n: int = 200) -> Path:
    y = np.zeros(n)
    y[[3, 50]] = np.nan
    y[77] = 2.0
    x = np.arange(n, dtype=np.float64)
    x[120] = np.inf
    return _write(tmp_path / "bad.parquet", n=n, row_group_size=64, x=x, y=y)


def test_skip_counts_every_row_per_reason_and_quarantines_it(tmp_path):
    f = _bad_file(tmp_path)
    q = tmp_path / "q.jsonl"
    kw = dict(on_bad_row="skip", quarantine=q, nan_policy="raise", max_bad_fraction=0.05)
    r = Reader(f, _schema(), 16, shuffle=True, shuffle_buffer=50, **kw)
    rows = sum(b.batch_size for b in r)
    assert rows == 196 and r.skipped == 4
    report = {
        "y: null or NaN label": 2,
        "y: label out of range for kind binary (expected 0 or 1)": 1,
        "x: null, NaN or inf dense value": 1,
    }
    assert r.bad_rows_report() == report and r.last_epoch_bad_rows() == report
    records = [json.loads(line) for line in q.read_text().splitlines()]
    assert sorted(d["row"] for d in records) == [3, 50, 77, 120]
    assert all(d["file"] == str(f) and d["values"]["ids"] == d["row"] for d in records)
    # a second epoch counts again; the counts survive a state round trip
    state = r.state_dict()
    r2 = Reader(f, _schema(), 16, shuffle=True, shuffle_buffer=50, **kw)
    r2.load_state_dict(json.loads(json.dumps(state)))
    assert sum(b.batch_size for b in r2) == 196
    assert r2.bad_rows_report() == {k: 2 * v for k, v in report.items()} and r2.skipped == 8
    assert r2.last_epoch_bad_rows() == report  # the second epoch alone


def test_skipped_fraction_past_the_threshold_is_an_error(tmp_path):
    f = _bad_file(tmp_path)
    kw = dict(on_bad_row="skip", nan_policy="raise")
    with pytest.raises(DataError, match=r"of 200 rows of epoch 0 are bad \(max_bad_fraction 0.01"):
        list(Reader(f, _schema(), 16, **kw))  # the default: 1%
    with pytest.raises(DataError, match="max_bad_fraction 0.015"):
        list(Reader(f, _schema(), 16, max_bad_fraction=0.015, **kw))
    assert sum(b.batch_size for b in Reader(f, _schema(), 16, max_bad_fraction=0.02, **kw)) == 196


def test_all_rows_bad_is_an_error_whatever_the_threshold(tmp_path):
    f = _write(tmp_path / "a.parquet", y=np.full(N, 3.0))
    with pytest.raises(DataError, match=r"all 40 rows of epoch 0 are bad .*'y: label out of range"):
        list(Reader(f, _schema(), 8, on_bad_row="skip", max_bad_fraction=1.0))
    (tmp_path / "b.csv").write_text("x,ids,y\n1.0,1\n2.0\n")  # every line has too few fields
    with pytest.raises(DataError, match=r"b\.csv: no readable row: all 2 rows are bad lines"):
        Reader(tmp_path / "b.csv", _schema(), 8, format="csv", on_bad_row="skip")


def test_all_rows_bad_never_trains(tmp_path, capsys):
    """`recis train` on data whose every label is out of range exits non-zero."""
    import pyarrow.orc as orc

    sys.path.insert(0, str(ROOT / "tests"))
    from test_io_layouts import _recis_table

    for split in ("train", "eval"):
        (tmp_path / split).mkdir()
        t = _recis_table(32)
        t = t.set_column(0, "label", pa.array([[2.0]] * 32, pa.list_(pa.float64())))
        orc.write_table(t, tmp_path / split / "p.orc")
    rc = main(
        [
            "train",
            str(ROOT / "examples" / "recis_layout.yaml"),
            f"--set=data.train={tmp_path / 'train'}",
            f"--set=data.eval={tmp_path / 'eval'}",
            f"--set=run_dir={tmp_path / 'run'}",
            "--set=data.on_bad_row=skip",
            "--set=data.max_bad_fraction=1.0",
            "--set=train.progress=false",
        ]
    )
    err = capsys.readouterr().err
    assert rc != 0 and "all 32 rows of epoch 0 are bad" in err
    assert not (tmp_path / "run" / "eval.json").exists()


# -- integrity ---------------------------------------------------------------------------


def test_page_checksum_mismatch_is_a_data_error(tmp_path):
    f = tmp_path / "a.parquet"
    table = pa.table({"x": np.arange(4000.0), "ids": np.arange(4000), "y": np.zeros(4000)})
    pq.write_table(table, f, compression="none", use_dictionary=False, write_page_checksum=True)
    col = pq.ParquetFile(f).metadata.row_group(0).column(0)  # x
    data = bytearray(f.read_bytes())
    at = col.data_page_offset + col.total_compressed_size // 2  # inside the page's values
    data[at : at + 8] = bytes(b ^ 0xFF for b in data[at : at + 8])
    f.write_bytes(bytes(data))
    # pyarrow reads the flipped values silently unless asked to verify
    assert not pq.read_table(f).equals(table)
    with pytest.raises(DataError, match=r"a\.parquet: corrupt or truncated file: .*CRC") as e:
        list(Reader(f, _schema(), 512))
    assert e.value.path == str(f) and "\n" not in str(e.value)


def test_csv_changed_after_counting_is_a_short_read(tmp_path):
    f = tmp_path / "a.csv"
    f.write_text("x,ids,y\n" + "".join(f"{i}.0,{i},0\n" for i in range(10)))
    r = Reader(f, _schema(), 4, format="csv", prefetch=0)
    f.write_text("x,ids,y\n" + "".join(f"{i}.0,{i},0\n" for i in range(6)))
    with pytest.raises(DataError, match=r"a\.csv: short read: 6 rows where .* says 10"):
        list(r)


def test_quarantine_write_failure_is_one_line_naming_the_path(tmp_path):
    """A quarantine file that cannot grow (RLIMIT_FSIZE, as a full disk) in a real process."""
    f = _bad_file(tmp_path, n=4000)
    q = tmp_path / "q.jsonl"
    script = textwrap.dedent(
        f"""
        import resource, signal
        from recis.errors import OutputError
        from recis.features import DenseFeature, LabelSpec, Schema, SparseFeature
        from recis.io import Reader
        schema = Schema(dense=[DenseFeature(name="x")], sparse=[SparseFeature(name="ids")],
                        labels=[LabelSpec(name="y")])
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (150, 150))
        r = Reader({str(f)!r}, schema, 16, on_bad_row="skip", quarantine={str(q)!r},
                   nan_policy="raise", max_bad_fraction=0.5)
        try:
            list(r)
        except OutputError as err:
            print("ERR", err)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("ERR")]
    assert f"cannot write quarantine file {q}: File too large" in line
    assert issubclass(OutputError, Exception)


def test_bce_task_on_labels_outside_0_1_is_refused_at_config_load(tmp_path):
    from recis.config import load_config
    from recis.errors import ConfigError

    cfg = ROOT / "examples" / "recis_layout.yaml"
    graded = "data.schema.labels=[{name: click, column: label, kind: graded, max: 4}]"
    with pytest.raises(ConfigError, match=r"labels\.click\.kind: graded labels .* loss bce"):
        load_config(cfg, [graded])
    binarized = (
        "data.schema.labels=[{name: click, column: label, kind: graded, max: 4, positive_at: 3}]"
    )
    assert load_config(cfg, [binarized]).data.schema_.labels[0].target == "binary"
    mse = "train.tasks=[{name: click, loss: mse}]"
    assert load_config(cfg, [graded, mse]).data.schema_.labels[0].kind == "graded"


def test_trainer_logs_skipped_rows_per_epoch_and_in_the_summary(tmp_path):
    """`recis train` with on_bad_row: skip: each epoch's skips in metrics.jsonl, the total in
    eval.json."""
    import pyarrow.orc as orc

    sys.path.insert(0, str(ROOT / "tests"))
    from test_io_layouts import _recis_table

    for split in ("train", "eval"):
        (tmp_path / split).mkdir()
        t = _recis_table(40)
        if split == "train":
            labels = [[1.0]] * 40
            labels[5], labels[17] = [7.0], []
            t = t.set_column(0, "label", pa.array(labels, pa.list_(pa.float64())))
        orc.write_table(t, tmp_path / split / "p.orc")
    run = tmp_path / "run"
    rc = main(
        [
            "train",
            str(ROOT / "examples" / "recis_layout.yaml"),
            f"--set=data.train={tmp_path / 'train'}",
            f"--set=data.eval={tmp_path / 'eval'}",
            f"--set=run_dir={run}",
            "--set=data.on_bad_row=skip",
            "--set=data.max_bad_fraction=0.1",
            "--set=data.batch_size=16",
            "--set=train.epochs=2",
            "--set=train.progress=false",
        ]
    )
    assert rc == 0
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    data = [r for r in records if r.get("split") == "data"]
    assert [r["epoch"] for r in data] == [1, 2]
    for r in data:
        assert r["skipped_rows"] == 2
        assert r["bad_rows/label: empty list (one label value per row expected)"] == 1
        assert r["bad_rows/label: label out of range for kind binary (expected 0 or 1)"] == 1
    assert json.loads((run / "eval.json").read_text())["skipped_rows"] == 4


def test_loader_workers_sum_their_skips(tmp_path):
    from recis.io import Loader

    y = np.zeros(N)
    y[[3, 10, 25]] = 5.0
    f = _write(tmp_path / "a.parquet", y=y)
    loader = Loader(f, _schema(), 4, num_workers=2, on_bad_row="skip", max_bad_fraction=0.2)
    rows = sorted(int(i) for b in loader for i in b.sparse["ids"].values())
    assert rows == [i for i in range(N) if i not in (3, 10, 25)]
    report = {"y: label out of range for kind binary (expected 0 or 1)": 3}
    assert loader.bad_rows_report() == report and loader.last_epoch_bad_rows() == report
    assert loader.skipped == 3


def test_a_csv_column_empty_in_one_file_is_not_drift(tmp_path):
    (tmp_path / "a.csv").write_text("x,ids,y,cat\n1.0,1,0,a\n")
    (tmp_path / "b.csv").write_text("x,ids,y,cat\n2.0,2,1,\n")  # cat: all null, type null
    schema = Schema(sparse=[SparseFeature(name="cat")], labels=[LabelSpec(name="y")])
    (b,) = list(Reader(tmp_path, schema, 8, format="csv"))
    assert b.sparse["cat"].lengths().tolist() == [1, 0]


# -- found in review ----------------------------------------------------------------------


def test_plus_signed_string_id_is_a_bad_row_not_an_arrow_error(tmp_path):
    # Arrow's string-to-int64 cast does not parse "+5": it must be a DataError on its row
    path = tmp_path / "x.csv"
    path.write_text("x,ids,y\n0.5,5,1\n0.5,+5,0\n")
    schema = Schema(
        dense=[DenseFeature(name="x")],
        sparse=[SparseFeature(name="ids", dtype="int")],
        labels=[LabelSpec(name="y")],
    )
    with pytest.raises(DataError, match=r"column 'ids', row 1 .*not a 64-bit integer"):
        list(Reader(str(path), schema, 8, format="csv", prefetch=0))


def test_on_empty_fill_holds_under_the_raise_policy(tmp_path):
    d = pa.array([[1.0, 2.0], [], [3.0, 4.0]], pa.list_(pa.float64()))
    path = tmp_path / "x.parquet"
    pq.write_table(
        pa.table({"d": d, "ids": np.arange(3), "y": np.zeros(3)}), path, write_page_checksum=True
    )
    schema = Schema(
        dense=[DenseFeature(name="d", dim=2, on_empty="fill", fill=-1.0)],
        sparse=[SparseFeature(name="ids")],
        labels=[LabelSpec(name="y")],
    )
    (batch,) = list(Reader(str(path), schema, 8, nan_policy="raise", prefetch=0))
    assert batch.dense.tolist() == [[1.0, 2.0], [-1.0, -1.0], [3.0, 4.0]]


def test_null_extra_is_a_bad_row(tmp_path):
    g = pa.array([2**60 + 1, None, 2**60], pa.int64())
    path = tmp_path / "x.parquet"
    pq.write_table(
        pa.table({"x": np.zeros(3), "ids": np.arange(3), "y": np.zeros(3), "g": g}),
        path,
        write_page_checksum=True,
    )
    schema = Schema(
        dense=[DenseFeature(name="x")],
        sparse=[SparseFeature(name="ids")],
        labels=[LabelSpec(name="y")],
        extras=["g"],
    )
    with pytest.raises(DataError, match=r"column 'g', row 1: null extra value"):
        list(Reader(str(path), schema, 8, prefetch=0))


def test_quarantine_lists_each_bad_row_once_across_resume_and_epochs(tmp_path):
    """Read-ahead puts rows in the quarantine before the saved position reaches them: a
    resumed reader (and a second epoch) read them again, and must not list them twice."""
    f = _bad_file(tmp_path)
    q = tmp_path / "q.jsonl"
    kw = dict(on_bad_row="skip", quarantine=q, nan_policy="raise", max_bad_fraction=0.05)
    r = Reader(f, _schema(), 16, shuffle_buffer=16, **kw)  # prefetch on (default)
    it = iter(r)
    next(it)
    state = json.loads(json.dumps(r.state_dict()))
    it.close()
    with open(q, "a") as out:  # and a line torn by a crash at the end of the file
        out.write('{"file": "x", "ro')
    r2 = Reader(f, _schema(), 16, shuffle_buffer=16, **kw)
    r2.load_state_dict(state)
    sum(b.batch_size for b in r2)
    sum(b.batch_size for b in r2)  # a second epoch
    lines = q.read_text().splitlines()
    records = [json.loads(line) for line in lines if not line.startswith('{"file": "x"')]
    assert sorted(d["row"] for d in records) == [3, 50, 77, 120]
    assert r2.skipped >= 8  # the counts still count every read
