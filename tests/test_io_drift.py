"""Files as other tools and other years wrote them: CSV in legacy encodings (GBK, Latin-1) and
with decimal commas, and tables whose newer files have columns the older ones lack."""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recis.config import DataConfig, load_config
from recis.errors import ConfigError, DataError
from recis.features import DenseFeature, LabelSpec, Schema, SparseFeature
from recis.io import CsvOptions, Reader, reader_from_config
from recis.io.split import read_input
from recis.io.vocab import read_texts
from recis.ops.hashing import hash_strings

SCHEMA = Schema(
    labels=[LabelSpec(name="y")],
    dense=[DenseFeature(name="x", fill=-1.0)],
    sparse=[SparseFeature(name="city", dtype="string")],
)
TEXT = "y,x,city\n1,0.5,{a}\n0,1.5,{b}\n1,2.5,{a}\n"


@pytest.mark.parametrize(
    ("encoding", "a", "b"), [("gbk", "北京", "上海"), ("latin-1", "café", "naïve")]
)
def test_legacy_encoding_reads_as_the_same_text_in_utf8(tmp_path, encoding, a, b):
    text = TEXT.format(a=a, b=b)
    legacy, utf8 = tmp_path / "legacy.csv", tmp_path / "utf8.csv"
    legacy.write_bytes(text.encode(encoding))
    utf8.write_text(text, encoding="utf-8")
    # without the encoding: one line naming the file, column, row and line, and the fix
    with pytest.raises(DataError) as err:
        list(Reader(legacy, SCHEMA, 8, format="csv"))
    msg = str(err.value)
    assert f"file {legacy}, column 'city', row 0 (line 2)" in msg
    assert "not UTF-8" in msg and "data.csv.encoding" in msg and "\n" not in msg

    (got,) = list(Reader(legacy, SCHEMA, 8, format="csv", csv=CsvOptions(encoding=encoding)))
    (want,) = list(Reader(utf8, SCHEMA, 8, format="csv"))
    ids = got.sparse["city"].values()
    assert ids.tolist() == want.sparse["city"].values().tolist()
    assert (
        ids.tolist() == hash_strings([a, b, a], salt="city").tolist()
    )  # the words, not their bytes
    assert got.dense[:, 0].tolist() == [0.5, 1.5, 2.5]
    # the split tool and the vocabulary builder read the text the same way
    table = read_input(legacy, "csv", csv=CsvOptions(encoding=encoding))
    assert table.column("city").to_pylist() == [a, b, a]
    texts = read_texts(legacy, ["city"], "csv", CsvOptions(encoding=encoding))
    assert list(texts) == [a, b, a]


def test_decimal_comma_and_semicolons_from_a_config(tmp_path):
    f = tmp_path / "eu.csv"
    f.write_text("y;x;city\n1;0,5;a\n0;-1234,25;b\n")
    data = DataConfig(schema=SCHEMA, format="csv", csv={"delimiter": ";", "decimal_point": ","})
    (b,) = list(reader_from_config(data, str(f), train=False))
    assert b.dense[:, 0].tolist() == [0.5, -1234.25]
    assert b.labels["y"].tolist() == [1.0, 0.0]
    # read_input (recis split) parses the numbers, not text
    assert read_input(f, "csv", csv=CsvOptions.from_config(data.csv)).column("x").to_pylist() == [
        0.5,
        -1234.25,
    ]


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("data.csv.encoding=klingon", "data.csv.encoding"),
        ("data.csv.decimal_point=,,", "data.csv.decimal_point"),
        ("data.on_missing_column=zero", "data.on_missing_column"),
    ],
)
def test_bad_csv_and_missing_column_options_name_the_field(tmp_path, override, field):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "data:\n  format: csv\n  schema:\n    labels: [{name: y}]\n    dense: [{name: x}]\n"
        "model: {name: dlrm}\n"
    )
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(cfg, [override])


def test_decimal_point_equal_to_the_delimiter_is_refused():
    with pytest.raises(ValueError, match="decimal_point ';' is also the delimiter"):
        DataConfig(schema=SCHEMA, format="csv", csv={"delimiter": ";", "decimal_point": ";"})


def _drifted(tmp_path) -> tuple[str, str]:
    """An older file without ``x`` and ``tags`` (added later) and a newer one with them."""
    old = tmp_path / "part-0.parquet"
    new = tmp_path / "part-1.parquet"
    pq.write_table(pa.table({"y": [1.0, 0.0], "city": ["a", "b"]}), old)
    pq.write_table(
        pa.table(
            {
                "y": [0.0, 1.0, 1.0],
                "city": ["a", "c", "b"],
                "x": [0.25, None, 4.0],
                "tags": [["t1", "t2"], [], ["t3"]],
            }
        ),
        new,
    )
    return str(old), str(new)


DRIFT = Schema(
    labels=[LabelSpec(name="y")],
    dense=[DenseFeature(name="x", fill=-1.0)],
    sparse=[SparseFeature(name="city", dtype="string"), SparseFeature(name="tags")],
)


def test_a_column_older_files_lack_is_an_error_that_names_the_option(tmp_path):
    old, new = _drifted(tmp_path)
    with pytest.raises(DataError) as err:
        Reader([old, new], DRIFT, 8)
    msg = str(err.value)
    assert f"file {old}, column 'x': missing column (file has y, city)" in msg
    assert "data.on_missing_column: null" in msg


def test_missing_columns_read_as_null_in_the_older_files(tmp_path, caplog):
    old, new = _drifted(tmp_path)
    with caplog.at_level(logging.WARNING, logger="recis.io"):
        reader = Reader([old, new], DRIFT, 8, on_missing_column="null")
    (b,) = list(reader)
    # old rows: dense fill, no tags; new rows as written (its own null is filled too)
    assert b.labels["y"].tolist() == [1.0, 0.0, 0.0, 1.0, 1.0]
    assert b.dense[:, 0].tolist() == [-1.0, -1.0, 0.25, -1.0, 4.0]
    assert b.sparse["tags"].lengths().tolist() == [0, 0, 2, 0, 1]
    assert (
        b.sparse["tags"].values().tolist() == hash_strings(["t1", "t2", "t3"], salt="tags").tolist()
    )
    assert (
        b.sparse["city"].values().tolist()
        == hash_strings(["a", "b", "a", "c", "b"], salt="city").tolist()
    )
    assert reader.missing_columns == {"x": [old], "tags": [old]}
    warned = [r.getMessage() for r in caplog.records if r.name == "recis.io"]
    assert warned == [
        f"column 'x' is missing in 1 of 2 files (the first: {old}): read as null there",
        f"column 'tags' is missing in 1 of 2 files (the first: {old}): read as null there",
    ]


def test_a_column_no_file_has_stays_an_error(tmp_path):
    old, _ = _drifted(tmp_path)
    other = tmp_path / "part-2.parquet"
    pq.write_table(pa.table({"y": [1.0], "city": ["z"]}), other)
    with pytest.raises(DataError, match=r"column 'x': missing column in all 2 files"):
        Reader([old, str(other)], DRIFT, 8, on_missing_column="null")


def test_a_label_older_files_lack_is_a_bad_row_not_a_guess(tmp_path):
    old, new = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pq.write_table(pa.table({"x": [1.0], "city": ["a"]}), old)
    pq.write_table(pa.table({"x": [2.0], "city": ["b"], "y": [1.0]}), new)
    schema = Schema(labels=DRIFT.labels, dense=DRIFT.dense, sparse=DRIFT.sparse[:1])
    files = [str(old), str(new)]
    with pytest.raises(DataError, match=rf"file {old}, column 'y', row 0: null or NaN label"):
        list(Reader(files, schema, 8, on_missing_column="null"))
    skip = Reader(
        files, schema, 8, on_missing_column="null", on_bad_row="skip", max_bad_fraction=0.5
    )
    (b,) = list(skip)
    assert b.labels["y"].tolist() == [1.0] and b.dense[:, 0].tolist() == [2.0]
    assert b.sparse["city"].values().tolist() == hash_strings(["b"], salt="city").tolist()
    assert skip.bad_rows_report() == {"y: null or NaN label": 1}


def test_integer_ids_that_pandas_wrote_as_floats(tmp_path):
    """An int column with a missing value leaves pandas as float64 (NaN, or null through
    pyarrow), and a CSV export as ``12345.0``: the same ids as int64 files give."""
    schema = Schema(labels=[LabelSpec(name="y")], sparse=[SparseFeature(name="item")])
    ints = tmp_path / "a.parquet"
    floats = tmp_path / "b.parquet"
    text = tmp_path / "c.csv"
    pq.write_table(pa.table({"y": [1.0, 0.0], "item": [12345, 2**40]}), ints)
    pq.write_table(
        pa.table({"y": [1.0, 0.0, 1.0], "item": pa.array([12345.0, None, float(2**40)])}), floats
    )
    text.write_text("y,item\n1,12345.0\n0,\n1,1099511627776.0\n")
    (b,) = list(Reader([str(ints), str(floats)], schema, 8))
    assert b.sparse["item"].values().tolist() == [12345, 2**40, 12345, 2**40]
    assert b.sparse["item"].lengths().tolist() == [1, 1, 1, 0, 1]
    (c,) = list(Reader(text, schema, 8, format="csv"))
    assert c.sparse["item"].values().tolist() == [12345, 2**40]
    assert c.sparse["item"].lengths().tolist() == [1, 0, 1]


@pytest.mark.parametrize(
    ("delimiter", "encoding", "a", "b"),
    [("::", "utf8", "北京", "上海"), ("||", "gbk", "東", "億"), ("；", "utf8", "a", "b")],
)
def test_delimiters_of_several_characters_read_as_one_character_ones(
    tmp_path, delimiter, encoding, a, b
):
    """MovieLens 1M's ``::`` (and any delimiter that is not one ASCII character) through the
    reader, the split tool and the vocabulary builder, in UTF-8 and GBK. ``東`` and ``億`` end
    in the byte of ``|`` in GBK (0x967C, 0x837C): the text is decoded before the delimiter
    is replaced, so ``東||`` is the value ``東`` and a delimiter."""
    text = TEXT.format(a=a, b=b)
    plain, multi = tmp_path / "plain.csv", tmp_path / "multi.dat"
    plain.write_text(text, encoding="utf-8")
    multi.write_bytes(text.replace(",", delimiter).encode(encoding))
    opts = CsvOptions(delimiter=delimiter, encoding=encoding)
    (got,) = list(Reader(multi, SCHEMA, 8, format="csv", csv=opts))
    (want,) = list(Reader(plain, SCHEMA, 8, format="csv"))
    assert got.sparse["city"].values().tolist() == want.sparse["city"].values().tolist()
    assert got.dense[:, 0].tolist() == [0.5, 1.5, 2.5]
    assert read_input(multi, "csv", csv=opts).column("city").to_pylist() == [a, b, a]
    assert list(read_texts(multi, ["city"], "csv", opts)) == [a, b, a]


def test_a_delimiter_split_between_reads_is_still_one(tmp_path, monkeypatch):
    from recis.io import csv_options

    monkeypatch.setattr(csv_options.DelimiterStream, "_BLOCK", 3)  # every cut position
    lines = ["y::x::city"] + [f"{i % 2}::{i}.5::c{i}" for i in range(40)]
    f = tmp_path / "ratings.dat"
    f.write_text("\n".join(lines) + "\n")
    table = read_input(f, "csv", csv=CsvOptions(delimiter="::"))
    assert table.column("x").to_pylist() == [i + 0.5 for i in range(40)]
    assert table.column("city").to_pylist() == [f"c{i}" for i in range(40)]
    # a bad line still names its line number (the rewrite keeps the lines)
    f.write_text("\n".join([*lines[:5], "1::2", *lines[5:]]) + "\n")
    with pytest.raises(DataError, match=rf"file {f}, row 4 \(line 6\): bad line"):
        list(Reader(f, SCHEMA, 64, format="csv", csv=CsvOptions(delimiter="::")))


def test_the_stand_in_character_inside_the_text_is_refused(tmp_path):
    f = tmp_path / "odd.dat"
    f.write_text("y::x::city\n1::0.5::a\x1fb\n")
    with pytest.raises(DataError, match=rf"file {f}: .*holds the character '\\x1f'"):
        list(Reader(f, SCHEMA, 8, format="csv", csv=CsvOptions(delimiter="::")))


@pytest.mark.parametrize("bad", ["", '"', "a\nb"])
def test_an_empty_or_quoting_delimiter_is_refused(bad):
    with pytest.raises(ValueError, match="a delimiter is one or more characters"):
        DataConfig(schema=SCHEMA, format="csv", csv={"delimiter": bad})
