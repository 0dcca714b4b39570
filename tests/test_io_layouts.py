"""Real layouts read unchanged: RecIS / TorchEasyRec list columns, every integer width, uint64.

Files are written with pyarrow (parquet with page checksums, ORC, CSV) in the layouts
those frameworks store: every column a list, labels single-element ``list<double>``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.orc as orc
import pyarrow.parquet as pq
import pytest

from recis.cli import main
from recis.config import load_config
from recis.errors import DataError
from recis.features import DenseFeature, LabelSpec, Schema, SparseFeature
from recis.io import CsvOptions, Reader, reader_from_config
from recis.ops.hashing import hash_strings

ROOT = Path(__file__).resolve().parent.parent


def _lists(values, t: pa.DataType) -> pa.Array:
    return pa.array([[v] for v in values], pa.list_(t))


def _recis_table(n: int = 12) -> pa.Table:
    """The columns of ``examples/recis_layout.yaml``: every column a list."""
    rng = np.random.default_rng(0)
    return pa.table(
        {
            "label": _lists(rng.integers(0, 2, n).astype(float), pa.float64()),
            "price": _lists(rng.uniform(1, 100, n), pa.float64()),
            "ctr_7d": _lists(rng.uniform(0, 1, n).astype(np.float32), pa.float32()),
            "age": _lists(rng.integers(18, 70, n), pa.int64()),
            "user_id": _lists(rng.integers(0, 1000, n), pa.int64()),
            "item_id": _lists(rng.integers(0, 1000, n), pa.int64()),
            "cate": _lists([f"c{i % 3}" for i in range(n)], pa.string()),
            "click_seq": pa.array(
                [list(range(i % 4)) for i in range(n)], pa.list_(pa.int64())
            ),  # multi-valued, some empty
        }
    )


def _write(table: pa.Table, path: Path, fmt: str) -> Path:
    if fmt == "orc":
        orc.write_table(table, path)
    else:
        pq.write_table(table, path, write_page_checksum=True)
    return path


SCHEMA = Schema(
    labels=[LabelSpec(name="click", column="label")],
    dense=[DenseFeature(name="price"), DenseFeature(name="ctr_7d"), DenseFeature(name="age")],
    sparse=[
        SparseFeature(name="user_id"),
        SparseFeature(name="cate"),
        SparseFeature(name="click_seq", max_len=2, truncate="last"),
    ],
)


@pytest.mark.parametrize("fmt", ["parquet", "orc"])
def test_recis_layout_single_element_lists_are_scalars(tmp_path, fmt):
    table = _recis_table()
    f = _write(table, tmp_path / f"a.{fmt}", fmt)
    (b,) = list(Reader(f, SCHEMA, 64, format=fmt))
    col = {
        c: [x[0] if x else None for x in table.column(c).to_pylist()] for c in table.column_names
    }
    assert b.labels["click"].tolist() == col["label"]
    np.testing.assert_allclose(b.dense[:, 0].numpy(), col["price"], rtol=1e-6)
    np.testing.assert_allclose(b.dense[:, 1].numpy(), col["ctr_7d"], rtol=1e-6)
    assert b.dense[:, 2].tolist() == [float(x) for x in col["age"]]  # list<int64> dense
    assert b.sparse["user_id"].values().tolist() == col["user_id"]
    # a string column is hashed with no dtype in the config, salted by its table
    assert b.sparse["cate"].values().tolist() == hash_strings(col["cate"], salt="cate").tolist()
    seq = b.sparse["click_seq"]
    assert seq.lengths().tolist() == [min(i % 4, 2) for i in range(12)]
    assert seq.values().tolist()[:3] == [0, 0, 1]  # rows 1 ([0]) and 2 ([0, 1])


@pytest.mark.parametrize("column", ["label", "price", "age"])
@pytest.mark.parametrize(
    "rows, what", [([], "empty list"), ([1, 2], "(more than one value|list length is not 1)")]
)
def test_list_with_zero_or_many_values_where_one_is_needed(tmp_path, column, rows, what):
    table = _recis_table()
    values = table.column(column).to_pylist()
    values[7] = [float(x) for x in rows] if column != "age" else rows
    table = table.set_column(
        table.schema.get_field_index(column),
        column,
        pa.array(values, table.schema.field(column).type),
    )
    f = _write(table, tmp_path / "a.parquet", "parquet")
    match = rf"a\.parquet, column '{column}', row 7: .*{what}"
    with pytest.raises(DataError, match=match) as e:
        list(Reader(f, SCHEMA, 4, shuffle=True))
    assert e.value.row == 7 and e.value.column == column


def test_empty_dense_list_takes_the_configured_default(tmp_path):
    table = _recis_table()
    prices = table.column("price").to_pylist()
    prices[3] = []
    table = table.set_column(1, "price", pa.array(prices, pa.list_(pa.float64())))
    f = _write(table, tmp_path / "a.parquet", "parquet")
    schema = Schema(
        labels=SCHEMA.labels, dense=[DenseFeature(name="price", on_empty="fill", fill=-7.0)]
    )
    (b,) = list(Reader(f, schema, 64))
    assert b.dense[3, 0].item() == -7.0 and b.dense[4, 0].item() == pytest.approx(prices[4][0])


@pytest.mark.parametrize(
    "t",
    [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32()],
)
def test_every_integer_width_passes_ids_through(tmp_path, t):
    hi = min(np.iinfo(t.to_pandas_dtype()).max, 10**6)
    lo = max(np.iinfo(t.to_pandas_dtype()).min, -(10**6))
    ids = [lo, -1 if lo < 0 else 0, 0 if lo < 0 else 1, 5, hi]
    table = pa.table({"ids": pa.array(ids, t), "y": [0.0] * 5})
    f = _write(table, tmp_path / "a.parquet", "parquet")
    schema = Schema(sparse=[SparseFeature(name="ids")], labels=[LabelSpec(name="y")])
    (b,) = list(Reader(f, schema, 8))
    assert b.sparse["ids"].values().tolist() == ids


def test_small_widths_of_both_signs_share_one_table(tmp_path):
    """int8 in one file, uint32 in another: values are ids, 5 is 5 in both."""
    _write(
        pa.table({"ids": pa.array([-3, 5], pa.int8()), "y": [0.0, 1.0]}), tmp_path / "a.parquet", ""
    )
    _write(
        pa.table({"ids": pa.array([5, 2**32 - 1], pa.uint32()), "y": [0.0, 1.0]}),
        tmp_path / "b.parquet",
        "",
    )
    schema = Schema(sparse=[SparseFeature(name="ids")], labels=[LabelSpec(name="y")])
    (b,) = list(Reader(tmp_path, schema, 8))
    assert b.sparse["ids"].values().tolist() == [-3, 5, 5, 2**32 - 1]


UINT64 = [0, 1, 2**63 - 1, 2**63, 2**63 + 1, 2**64 - 1]


def test_uint64_ids_above_2_63_stay_distinct(tmp_path):
    """(ORC has no unsigned types: uint64 comes from parquet.)"""
    table = pa.table(
        {
            "uid": _lists(UINT64, pa.uint64()),  # the TorchEasyRec list layout
            "scalar": pa.array(UINT64, pa.uint64()),
            "y": [0.0, 1.0] * 3,
        }
    )
    f = _write(table, tmp_path / "a.parquet", "parquet")
    schema = Schema(
        sparse=[SparseFeature(name="uid"), SparseFeature(name="scalar")],
        labels=[LabelSpec(name="y")],
    )
    (b,) = list(Reader(f, schema, 8))
    for key in ("uid", "scalar"):
        ids = b.sparse[key].values().tolist()
        assert len(set(ids)) == len(UINT64)
        # the 64 bits are kept: the documented mapping is the two's-complement view
        assert ids == np.array(UINT64, np.uint64).view(np.int64).tolist()


def test_uint64_next_to_signed_ids_of_one_table_is_refused(tmp_path):
    """uint64 2**64-1 and int64 -1 have the same bits: a table may not hold both kinds."""
    _write(
        pa.table({"uid": pa.array([2**64 - 1], pa.uint64()), "y": [0.0]}),
        tmp_path / "a.parquet",
        "",
    )
    _write(pa.table({"uid": pa.array([-1], pa.int64()), "y": [1.0]}), tmp_path / "b.parquet", "")
    schema = Schema(sparse=[SparseFeature(name="uid")], labels=[LabelSpec(name="y")])
    with pytest.raises(DataError, match=r"b\.parquet, column 'uid': ids are int64 here but uint64"):
        Reader(tmp_path, schema, 8)  # at construction, before any batch
    # two columns feeding one table: the same rule
    _write(
        pa.table(
            {
                "a": pa.array([2**63], pa.uint64()),
                "b": pa.array([-(2**63)], pa.int64()),
                "y": [1.0],
            }
        ),
        tmp_path / "c.parquet",
        "",
    )
    shared = Schema(
        sparse=[SparseFeature(name="a", table="t"), SparseFeature(name="b", table="t")],
        labels=[LabelSpec(name="y")],
    )
    with pytest.raises(DataError, match=r"c\.parquet, column 'b': .*table 't'"):
        Reader(tmp_path / "c.parquet", shared, 8)


def test_ids_beyond_64_bits_are_refused(tmp_path):
    big = pa.array([10**25, 3], pa.decimal128(38, 0))
    f = _write(pa.table({"ids": big, "y": [0.0, 1.0]}), tmp_path / "d.parquet", "")
    schema = Schema(sparse=[SparseFeature(name="ids")], labels=[LabelSpec(name="y")])
    with pytest.raises(
        DataError, match=r"d\.parquet, column 'ids': wrong type decimal128.*64 bits"
    ):
        Reader(f, schema, 8)
    # decimal strings under dtype int: parsed, and a value past int64 is a DataError on its row
    strings = ["12", " -7 ", "123456789012345678901234", "9223372036854775807"]
    f = _write(pa.table({"ids": strings, "y": [0.0] * 4}), tmp_path / "s.parquet", "")
    as_int = Schema(sparse=[SparseFeature(name="ids", dtype="int")], labels=[LabelSpec(name="y")])
    with pytest.raises(DataError, match=r"column 'ids', row 2: id is not a 64-bit integer"):
        list(Reader(f, as_int, 8))
    q = tmp_path / "q.jsonl"
    r = Reader(f, as_int, 8, on_bad_row="skip", quarantine=q, max_bad_fraction=0.5)
    (b,) = list(r)
    assert b.sparse["ids"].values().tolist() == [12, -7, 2**63 - 1]
    assert r.bad_rows_report() == {"ids: id is not a 64-bit integer (dtype: int)": 1}


def test_csv_ids_under_dtype_int_are_parsed_with_row_and_line(tmp_path):
    rows = ["ids,y", "1,0", "18446744073709551616,1", "3,0"]  # 2**64: beyond 64 bits
    (tmp_path / "a.csv").write_text("\n".join(rows) + "\n")
    schema = Schema(sparse=[SparseFeature(name="ids", dtype="int")], labels=[LabelSpec(name="y")])
    with pytest.raises(DataError, match=r"a\.csv, column 'ids', row 1 \(line 3\): id is not"):
        list(Reader(tmp_path / "a.csv", schema, 8, format="csv"))


def _example(tmp_path: Path, table, fmt: str, example: str):  # noqa: ANN001 - a table maker
    """``tmp_path/train`` (64 rows) and ``tmp_path/eval`` (32) written by ``table(n)`` as
    ``fmt``; the example config ``example`` loaded."""
    for split, n in (("train", 64), ("eval", 32)):
        (tmp_path / split).mkdir()
        _write(table(n), tmp_path / split / f"part-0.{fmt}", fmt)
    return load_config(ROOT / "examples" / example)


def test_recis_layout_example_reads_and_trains(tmp_path):
    cfg = _example(tmp_path, _recis_table, "orc", "recis_layout.yaml")
    reader = reader_from_config(cfg.data, str(tmp_path / "train"), train=False)
    assert sum(b.batch_size for b in reader) == 64
    _train(tmp_path, "recis_layout.yaml")


def _tzrec_table(n: int) -> pa.Table:
    rng = np.random.default_rng(1)
    tags = [[f"t{j}" for j in range(i % 3)] for i in range(n)]
    return pa.table(
        {
            "clk": _lists(rng.integers(0, 2, n).astype(float), pa.float64()),
            "user_id": _lists(rng.integers(0, 2**64, n, dtype=np.uint64), pa.uint64()),
            "adgroup_id": _lists(rng.integers(0, 10**6, n), pa.int64()),
            "pid": _lists([f"p{i % 2}" for i in range(n)], pa.string()),
            "cate_id": _lists([f"c{i % 5}" for i in range(n)], pa.string()),
            "tags": pa.array(tags, pa.list_(pa.string())),
            "tag_w": pa.array([[0.5] * len(t) for t in tags], pa.list_(pa.float32())),
            "price": _lists(rng.uniform(1, 50, n), pa.float64()),
        }
    )


def test_torcheasyrec_layout_example_reads_and_trains(tmp_path):
    cfg = _example(tmp_path, _tzrec_table, "parquet", "torcheasyrec_layout.yaml")
    (b,) = list(reader_from_config(cfg.data, str(tmp_path / "eval"), train=False))
    assert b.sparse["tags"].weights().tolist()[:1] == [0.5]
    assert b.sparse["tags"].lengths().tolist()[:3] == [0, 1, 2]
    _train(tmp_path, "torcheasyrec_layout.yaml")


def _events_table(n: int) -> pa.Table:
    """The nested event log of ``examples/nested_layout.yaml`` (Spark / BigQuery export)."""
    rng = np.random.default_rng(2)
    tags = [[(f"t{j}", float(j + 1) / 4) for j in range(i % 3)] for i in range(n)]
    user = pa.struct(
        [
            ("id", pa.string()),
            ("age", pa.int64()),
            ("geo", pa.struct([("country", pa.string()), ("city", pa.string())])),
        ]
    )
    item = pa.struct(
        [
            ("id", pa.int64()),
            ("category", pa.string()),
            ("price", pa.float64()),
            ("tag_scores", pa.map_(pa.string(), pa.float32())),
        ]
    )
    return pa.table(
        {
            "label": pa.array(
                [{"click": bool(i % 2), "dwell_s": 1.5} for i in range(n)],
                pa.struct([("click", pa.bool_()), ("dwell_s", pa.float64())]),
            ),
            "user": pa.array(
                [
                    None
                    if i % 7 == 3
                    else {
                        "id": f"u{i % 9}",
                        "age": 20 + i % 30,
                        "geo": {"country": "de", "city": "x"},
                    }
                    for i in range(n)
                ],
                user,
            ),
            "item": pa.array(
                [
                    {
                        "id": int(rng.integers(0, 50)),
                        "category": f"c{i % 4}",
                        "price": float(rng.uniform(1, 9)),
                        "tag_scores": tags[i],
                    }
                    for i in range(n)
                ],
                item,
            ),
            "context": pa.array(
                [
                    {"hour": i % 24, "clicks": [int(x) for x in rng.integers(0, 50, i % 5)]}
                    for i in range(n)
                ],
                pa.struct([("hour", pa.int32()), ("clicks", pa.list_(pa.int64()))]),
            ),
        }
    )


def test_nested_layout_example_reads_and_trains(tmp_path):
    cfg = _example(tmp_path, _events_table, "parquet", "nested_layout.yaml")
    (b,) = list(reader_from_config(cfg.data, str(tmp_path / "eval"), train=False))
    assert b.labels["click"].tolist()[:4] == [0.0, 1.0, 0.0, 1.0]
    assert b.sparse["tags"].lengths().tolist()[:3] == [0, 1, 2]
    assert b.sparse["tags"].weights().tolist()[:3] == [0.25, 0.25, 0.5]
    assert b.sparse["user_id"].lengths().tolist()[3] == 0  # a null user struct: no id
    assert b.dense[3, 0].item() == 0.0 and b.dense[0, 0].item() == 20.0  # age, filled
    _train(tmp_path, "nested_layout.yaml")


def _train(tmp_path: Path, example: str) -> None:
    run_dir = tmp_path / "run"
    rc = main(
        [
            "train",
            str(ROOT / "examples" / example),
            "--set",
            f"data.train={tmp_path / 'train'}",
            "--set",
            f"data.eval={tmp_path / 'eval'}",
            "--set",
            f"run_dir={run_dir}",
            "--set",
            "data.batch_size=16",
            "--set",
            "train.max_steps=2",
            "--set",
            "train.progress=false",
        ]
    )
    assert rc == 0
    result = json.loads((run_dir / "eval.json").read_text())
    assert 0.0 <= result["click/auc"] <= 1.0


# -- real public logs, read unchanged (skipped when ../shared/data is absent) -------------

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _needs(*parts: str) -> Path:
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent")
    return path


def test_open_bandit_logs_read_unchanged():
    """Six impression logs: int64 click label, large_string hashed user features (no dtype
    set), int ids, a float column; 60,000 rows."""
    root = _needs("obd_small")
    files = sorted(str(p) for p in root.glob("*/*/*.parquet") if p.stem != "item_context")
    schema = Schema(
        labels=[LabelSpec(name="click")],
        dense=[DenseFeature(name="propensity_score")],
        sparse=[SparseFeature(name="item_id"), SparseFeature(name="position")]
        + [SparseFeature(name=f"user_feature_{k}", table="user") for k in range(4)],
    )
    reader = Reader(files, schema, 8192)
    clicks = rows = 0
    for b in reader:
        rows += b.batch_size
        clicks += int(b.labels["click"].sum())
        assert b.sparse["user_feature_0"].lengths().eq(1).all()
    assert (rows, clicks) == (60_000, 287)  # the README's counts


def test_movielens_ratings_binarized_at_4():
    f = _needs("ml_latest_small", "ratings.parquet")
    rating = pq.read_table(f, columns=["rating"]).column("rating").to_numpy()
    schema = Schema(
        labels=[LabelSpec(name="like", column="rating", kind="real", positive_at=4.0)],
        sparse=[SparseFeature(name="userId"), SparseFeature(name="movieId")],
    )
    likes = sum(float(b.labels["like"].sum()) for b in Reader(f, schema, 32768))
    assert likes == float((rating >= 4.0).sum())
    graded = Schema(labels=[LabelSpec(name="r", column="rating", kind="graded", max=5)])
    # half-star ratings are not integer grades: refused with the row
    with pytest.raises(DataError, match=r"column 'rating', row \d+: label out of range for kind"):
        list(Reader(f, graded, 32768))


def test_qbqtc_graded_labels_and_raw_text_ids():
    f = _needs("qbqtc", "pairs.parquet")
    label = pq.read_table(f, columns=["label"]).column("label").to_numpy()
    schema = Schema(
        labels=[
            LabelSpec(name="very", column="label", kind="graded", max=2, positive_at=2),
            LabelSpec(name="some", column="label", kind="graded", max=2, positive_at=1),
        ],
        sparse=[SparseFeature(name="query")],  # a string column: hashed, no dtype
    )
    very = some = 0.0
    for b in Reader(f, schema, 8192):
        very += float(b.labels["very"].sum())
        some += float(b.labels["some"].sum())
    assert (very, some) == (float((label == 2).sum()), float((label >= 1).sum()))
    with pytest.raises(DataError, match=r"column 'label', row \d+: label out of range .*binary"):
        list(Reader(f, Schema(labels=[LabelSpec(name="label")]), 8192))


def test_csv_string_ids_are_hashed_as_written(tmp_path):
    """dtype string: a CSV id column is text in every file ("007" is not 7)."""
    (tmp_path / "a.csv").write_text("cat,y\n007,0\n12,1\n")
    (tmp_path / "b.csv").write_text("cat,y\nab,0\n12,1\n")
    schema = Schema(
        sparse=[SparseFeature(name="cat", dtype="string")], labels=[LabelSpec(name="y")]
    )
    (b,) = list(Reader(tmp_path, schema, 8, format="csv"))
    expected = hash_strings(["007", "12", "ab", "12"], salt="cat").tolist()
    assert b.sparse["cat"].values().tolist() == expected


def test_ids_joined_by_a_separator_are_multi_hot(tmp_path):
    table = pa.table(
        {
            "genres": ["Action|Comedy", "", None, "Drama||Action"],
            "hist": ["1|2", "3", "x|4", ""],
            "y": [0.0, 1.0, 0.0, 1.0],
        }
    )
    f = _write(table, tmp_path / "a.parquet", "parquet")
    schema = Schema(
        sparse=[
            SparseFeature(name="genres", separator="|"),
            SparseFeature(name="hist", dtype="int", separator="|"),
        ],
        labels=[LabelSpec(name="y")],
    )
    with pytest.raises(DataError, match=r"column 'hist', row 2: id is not a 64-bit integer"):
        list(Reader(f, schema, 8))
    (b,) = list(Reader(f, schema, 8, on_bad_row="skip", max_bad_fraction=0.5))
    g = b.sparse["genres"]
    assert g.lengths().tolist() == [2, 0, 2]  # row 2 skipped; "" and empty pieces are no id
    words = ["Action", "Comedy", "Drama", "Action"]
    assert g.values().tolist() == hash_strings(words, salt="genres").tolist()
    assert b.sparse["hist"].values().tolist() == [1, 2, 3]


def test_id_weight_pieces_are_weighted_ids(tmp_path):
    """EasyRec tag features: ``id:weight`` pieces in one string (or a list<string>) give the
    same KJT as a list<string> of ids with an aligned list<float> of weights."""
    table = pa.table(
        {
            "tags": ["sports:0.8|music:0.25|news", "", None, "http://a.b:2:0.5|:3|x: 1e-1 "],
            "pieces": [
                ["sports:0.8", "music:0.25", "news"],
                [],
                None,
                ["http://a.b:2:0.5", ":3", "x: 1e-1 "],
            ],
            "y": [0.0, 1.0, 0.0, 1.0],
        }
    )
    f = _write(table, tmp_path / "kv.parquet", "parquet")
    schema = Schema(
        sparse=[
            SparseFeature(name="tags", table="t", separator="|", kv_separator=":"),
            SparseFeature(name="pieces", table="t", separator="|", kv_separator=":"),
        ],
        labels=[LabelSpec(name="y")],
    )
    (b,) = list(Reader(f, schema, 8))
    ids = ["sports", "music", "news", "http://a.b:2", "x"]  # the weight follows the last ':'
    for key in ("tags", "pieces"):
        jt = b.sparse[key]
        assert jt.lengths().tolist() == [3, 0, 0, 2], key  # an empty id (":3") is no id
        assert jt.values().tolist() == hash_strings(ids, salt="t").tolist(), key
        assert jt.weights().tolist() == pytest.approx([0.8, 0.25, 1.0, 0.5, 0.1]), key
    bad = pa.table({"tags": ["a:1|b:x", "c:2", "d:inf", "e:"], "y": [0.0, 1.0, 0.0, 1.0]})
    g = _write(bad, tmp_path / "bad.parquet", "parquet")
    one = Schema(sparse=[schema.sparse[0]], labels=[LabelSpec(name="y")])
    with pytest.raises(DataError, match=r"column 'tags', row 0: weight is not a finite number"):
        list(Reader(g, one, 8))
    (kept,) = list(Reader(g, one, 8, on_bad_row="skip", max_bad_fraction=0.9))
    assert kept.sparse["tags"].weights().tolist() == [2.0]  # rows 0, 2 and 3 skipped
    # pydantic's ValidationError (a ValueError) here; loading a run config makes it a ConfigError
    with pytest.raises(ValueError, match=r"sparse\.x\.kv_separator needs separator"):
        SparseFeature(name="x", kv_separator=":")
    with pytest.raises(ValueError, match="must differ"):
        SparseFeature(name="x", separator=":", kv_separator=":")


def test_movielens_genres_split_unchanged():
    f = _needs("ml_latest_small", "movies.parquet")
    genres = pq.read_table(f, columns=["genres"]).column("genres").to_pylist()
    schema = Schema(
        sparse=[SparseFeature(name="genres", separator="|"), SparseFeature(name="movieId")]
    )
    n = sum(int(b.sparse["genres"].lengths().sum()) for b in Reader(f, schema, 4096))
    assert n == sum(len(g.split("|")) for g in genres)


def test_hive_text_and_orc_tables_read_unchanged(tmp_path):
    """A Hive table directory as Hive writes it: files ``000000_0`` without a suffix beside
    ``_SUCCESS`` and ``.crc`` files; text rows with ^A between fields, ^B between list items,
    ^C between a map's key and value, ``\\N`` for NULL and no quoting (a title may hold
    ``"``). The batches equal those of the same rows in parquet."""
    rows = [
        (1, 2.5, 7, ["a", "b"], {"x": 0.5, "y": 2.0}, '"hi" she said'),
        (0, None, 8, [], {}, ""),
        (1, 0.25, None, ["c"], {"z": 1.0}, "plain"),
    ]

    def text(r) -> str:
        y, price, user, tags, scores, title = r
        fields = [
            str(y),
            "\\N" if price is None else str(price),
            "\\N" if user is None else str(user),
            "\x02".join(tags),
            "\x02".join(f"{k}\x03{v}" for k, v in scores.items()),
            title,
        ]
        return "\x01".join(fields) + "\n"

    table = tmp_path / "tbl"
    table.mkdir()
    (table / "000000_0").write_text(text(rows[0]) + text(rows[1]), encoding="utf-8")
    (table / "000001_0").write_text(text(rows[2]), encoding="utf-8")
    (table / "_SUCCESS").write_text("")
    (table / ".000000_0.crc").write_bytes(b"\x00\x01")
    names = ["y", "price", "user", "tags", "scores", "title"]
    schema = Schema(
        dense=[DenseFeature(name="price", fill=-1.0)],
        sparse=[
            SparseFeature(name="user"),
            SparseFeature(name="tags", separator="\x02"),
            SparseFeature(name="scores", table="tags", separator="\x02", kv_separator="\x03"),
            SparseFeature(name="title", dtype="string"),
        ],
        labels=[LabelSpec(name="y")],
    )
    csv = CsvOptions(layout="hive", column_names=names)
    (got,) = list(Reader(table, schema, 8, format="csv", csv=csv))
    assert got.labels["y"].tolist() == [1.0, 0.0, 1.0]
    assert got.dense[:, 0].tolist() == [2.5, -1.0, 0.25]  # \N -> fill
    assert got.sparse["user"].lengths().tolist() == [1, 1, 0]
    assert (
        got.sparse["tags"].values().tolist() == hash_strings(["a", "b", "c"], salt="tags").tolist()
    )
    s = got.sparse["scores"]
    assert s.values().tolist() == hash_strings(["x", "y", "z"], salt="tags").tolist()
    assert s.weights().tolist() == [0.5, 2.0, 1.0]
    t = got.sparse["title"]  # the quote is text; an empty field is no id
    assert t.lengths().tolist() == [1, 0, 1]
    assert t.values().tolist() == hash_strings(['"hi" she said', "plain"], salt="title").tolist()
    # a Hive ORC table: the same suffix-less names
    orc_dir = tmp_path / "orc_tbl"
    orc_dir.mkdir()
    orc.write_table(pa.table({"y": [1.0, 0.0], "user": [7, 8]}), orc_dir / "000000_0")
    (orc_dir / "_SUCCESS").write_text("")
    small = Schema(sparse=[SparseFeature(name="user")], labels=[LabelSpec(name="y")])
    (b,) = list(Reader(orc_dir, small, 8, format="orc"))
    assert b.sparse["user"].values().tolist() == [7, 8]
    with pytest.raises(DataError, match="nor one without a suffix"):
        empty = tmp_path / "none"
        empty.mkdir()
        (empty / "notes.md").write_text("x")
        Reader(empty, small, 8, format="orc")


def test_string_labels_are_mapped_by_values(tmp_path):
    """Amazon ESCI's labels are the strings E / S / C / I: ``values`` maps them to grades
    (then ``positive_at`` binarizes); a string the map lacks is a bad row naming it."""
    esci = {"E": 3.0, "S": 2.0, "C": 1.0, "I": 0.0}
    table = pa.table(
        {
            "esci_label": pa.array(["E", "I", "S", "C", "E"]).dictionary_encode(),
            "as_list": [["E"], ["I"], ["S"], ["C"], ["E"]],
            "flag": ["true", "false", "false", "true", "false"],
            "q": [1, 2, 3, 4, 5],
        }
    )
    f = _write(table, tmp_path / "esci.parquet", "parquet")
    schema = Schema(
        sparse=[SparseFeature(name="q")],
        labels=[
            LabelSpec(name="grade", column="esci_label", kind="graded", max=3, values=esci),
            LabelSpec(
                name="rel", column="as_list", kind="graded", max=3, values=esci, positive_at=2
            ),
            LabelSpec(name="click", column="flag", values={"true": 1, "false": 0}),
        ],
    )
    (b,) = list(Reader(f, schema, 8))
    assert b.labels["grade"].tolist() == [3.0, 0.0, 2.0, 1.0, 3.0]
    assert b.labels["rel"].tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert b.labels["click"].tolist() == [1.0, 0.0, 0.0, 1.0, 0.0]
    bad = _write(
        pa.table({"esci_label": ["E", "e", "S"], "q": [1, 2, 3]}), tmp_path / "b.parquet", "parquet"
    )
    one = Schema(sparse=[SparseFeature(name="q")], labels=[schema.labels[0]])
    with pytest.raises(DataError, match=r"row 1: label not in values \(E, S, C, I\) \(value 'e'\)"):
        list(Reader(bad, one, 8))
    (kept,) = list(Reader(bad, one, 8, on_bad_row="skip", max_bad_fraction=0.5))
    assert kept.labels["grade"].tolist() == [3.0, 2.0]
    plain = Schema(sparse=[SparseFeature(name="q")], labels=[LabelSpec(name="esci_label")])
    with pytest.raises(DataError, match="map the strings with the label's values"):
        Reader(bad, plain, 8)
    numbers = _write(pa.table({"y": [1.0], "q": [1]}), tmp_path / "n.parquet", "parquet")
    mapped = Schema(sparse=[SparseFeature(name="q")], labels=[LabelSpec(name="y", values=esci)])
    with pytest.raises(DataError, match="column 'y'.*a string column"):
        Reader(numbers, mapped, 8)


def test_decimal_values_are_read_as_floats(tmp_path):
    """Hive / Spark store prices as DECIMAL(10, 2): dense values, labels, weights and extras
    from decimal columns (and single-element decimal lists) are floats; ids in a decimal
    column stay refused."""
    import decimal

    def dec(values, t=None):
        cells = [None if v is None else decimal.Decimal(v) for v in values]
        return pa.array(cells, t or pa.decimal128(10, 2))

    table = pa.table(
        {
            "price": dec(["12.34", None, "0.10"]),
            "price_list": pa.array(
                [[decimal.Decimal("1.5")], [decimal.Decimal("2.25")], []],
                pa.list_(pa.decimal128(6, 2)),
            ),
            "y": dec(["1", "0", "1"], pa.decimal128(1, 0)),
            "tags": [["a"], ["b", "c"], []],
            "w": pa.array(
                [[decimal.Decimal("0.5")], [decimal.Decimal("1"), decimal.Decimal("2")], []],
                pa.list_(pa.decimal128(4, 1)),
            ),
            "amount": dec(["3.00", "4.50", "5.25"]),
        }
    )
    f = _write(table, tmp_path / "d.parquet", "parquet")
    schema = Schema(
        dense=[
            DenseFeature(name="price", fill=-1.0),
            DenseFeature(name="price_list", on_empty="fill", fill=0.0),
        ],
        sparse=[SparseFeature(name="tags", weight_column="w")],
        labels=[LabelSpec(name="y")],
        extras=["amount"],
    )
    (b,) = list(Reader(f, schema, 8))
    assert b.dense.flatten().tolist() == pytest.approx([12.34, 1.5, -1.0, 2.25, 0.1, 0.0])
    assert b.labels["y"].tolist() == [1.0, 0.0, 1.0]
    assert b.sparse["tags"].weights().tolist() == [0.5, 1.0, 2.0]
    assert b.extras["amount"].tolist() == [3.0, 4.5, 5.25]
    ids = Schema(sparse=[SparseFeature(name="price")], labels=[LabelSpec(name="y")])
    with pytest.raises(DataError, match="integer ids of at most 64 bits"):
        Reader(f, ids, 8)


def test_polars_style_view_and_large_types_read_unchanged(tmp_path):
    """Files written from Polars frames keep Arrow's ``string_view`` strings and large
    lists; recis reads them as the plain types: the same ids as ``string`` columns give."""
    views = pa.table(
        {
            "uid": pa.array(["a", "b", None], pa.string_view()),
            "tags": pa.array([["x"], [], ["y", "z"]], pa.large_list(pa.string_view())),
            "y": pa.array([[1.0], [0.0], [1.0]], pa.large_list(pa.float64())),
            "d": pa.array([0.5, 1.5, 2.5], pa.float32()),
        }
    )
    plain = pa.table(
        {
            "uid": pa.array(["a", "b", None]),
            "tags": pa.array([["x"], [], ["y", "z"]]),
            "y": pa.array([1.0, 0.0, 1.0]),
            "d": pa.array([0.5, 1.5, 2.5], pa.float32()),
        }
    )
    a = _write(views, tmp_path / "views.parquet", "parquet")
    b = _write(plain, tmp_path / "plain.parquet", "parquet")
    assert pa.types.is_string_view(pq.read_schema(a).field("uid").type)  # kept by the file
    schema = Schema(
        dense=[DenseFeature(name="d")],
        sparse=[SparseFeature(name="uid"), SparseFeature(name="tags")],
        labels=[LabelSpec(name="y")],
    )
    (got,) = list(Reader(a, schema, 8))
    (want,) = list(Reader(b, schema, 8))
    for key in ("uid", "tags"):
        assert got.sparse[key].values().tolist() == want.sparse[key].values().tolist()
        assert got.sparse[key].lengths().tolist() == want.sparse[key].lengths().tolist()
    assert got.labels["y"].tolist() == [1.0, 0.0, 1.0]


def test_numbers_written_as_text_are_dense_values(tmp_path):
    """A Hive ``STRING`` column of prices: read as numbers, a blank text is the fill, a text
    that is not a number is a bad row named by file, row and column (or skipped)."""
    price = ["1.5", " 20 ", "", None, "3e2", "-0.25", "nan", "7"]
    y = [0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    pq.write_table(pa.table({"y": y, "price": price}), tmp_path / "a.parquet")
    schema = Schema(dense=[DenseFeature(name="price", fill=-1.0)], labels=[LabelSpec(name="y")])
    got = np.concatenate([b.dense[:, 0].numpy() for b in Reader(tmp_path / "a.parquet", schema, 4)])
    assert got.tolist() == [1.5, 20.0, -1.0, -1.0, 300.0, -0.25, -1.0, 7.0]
    price[5] = "1,234"
    pq.write_table(pa.table({"y": y, "price": price}), tmp_path / "b.parquet")
    with pytest.raises(DataError) as err:
        list(Reader(tmp_path / "b.parquet", schema, 4))
    msg = str(err.value)
    assert "b.parquet" in msg and "'price'" in msg and "row 5" in msg and "not a number" in msg
    reader = Reader(tmp_path / "b.parquet", schema, 4, on_bad_row="skip", max_bad_fraction=0.2)
    kept = np.concatenate([b.dense[:, 0].numpy() for b in reader])
    assert kept.tolist() == [1.5, 20.0, -1.0, -1.0, 300.0, -1.0, 7.0]


def test_a_time_column_read_as_its_hour_and_weekday(tmp_path):
    """``time: hour`` / ``weekday``: the part of a timestamp (in its own zone), a date, or
    epoch seconds / milliseconds (UTC) as one categorical id a row; a null time no id."""
    import datetime as dt

    when = [dt.datetime(2024, 1, 1, 23, 30), dt.datetime(2024, 1, 6, 8), None]  # Mon, Sat
    secs = [1704151800.0, 1704528000.0, float("nan")]  # the same times, UTC
    table = pa.table(
        {
            "y": [0.0, 1.0, 0.0],
            "ts": pa.array(when, pa.timestamp("us")),
            "local": pa.array(when, pa.timestamp("us", tz="Asia/Shanghai")),  # UTC + 8
            "epoch": secs,
            "ms": pa.array([int(1000 * s) if s == s else None for s in secs], pa.int64()),
            "day": pa.array([w.date() if w else None for w in when], pa.date32()),
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    feats = [
        SparseFeature(name="h", column="ts", time="hour"),
        SparseFeature(name="lh", column="local", time="hour"),
        SparseFeature(name="eh", column="epoch", time="hour"),
        SparseFeature(name="mw", column="ms", time="weekday", time_unit="ms"),
        SparseFeature(name="dw", column="day", time="weekday"),
    ]
    schema = Schema(sparse=feats, labels=[LabelSpec(name="y")])
    (batch,) = list(Reader(tmp_path / "t.parquet", schema, 8))
    got = {k: batch.sparse[k].values().tolist() for k in batch.sparse.keys()}
    assert got == {"h": [23, 8], "lh": [7, 16], "eh": [23, 8], "mw": [0, 5], "dw": [0, 5]}
    assert batch.sparse["h"].lengths().tolist() == [1, 1, 0]
    with pytest.raises(ValueError, match=r"sparse\.h\.time: .*drop separator"):
        SparseFeature(name="h", time="hour", separator="|")
    pq.write_table(pa.table({"y": [0.0], "ts": ["monday"]}), tmp_path / "s.parquet")
    with pytest.raises(DataError, match="a timestamp, date or number column"):
        Reader(tmp_path / "s.parquet", Schema(sparse=feats[:1], labels=[LabelSpec(name="y")]), 8)
