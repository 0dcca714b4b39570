"""Every format gives the same Batch for the same rows; list, string, weighted, text columns."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.orc as orc
import pyarrow.parquet as pq
import pytest
import torch

from recis.features import DenseFeature, LabelSpec, Schema, SparseFeature, TextFeature
from recis.io import CRITEO_COLUMNS, CsvOptions, Reader, to_batch
from recis.ops.hashing import hash_strings

N = 50


def _table() -> pa.Table:
    rng = np.random.default_rng(0)
    dense = rng.normal(size=N).astype(np.float64)
    dense[[3, 17]] = np.nan
    ids = rng.integers(-(2**62), 2**62, size=N)  # negative and huge ids pass through
    return pa.table(
        {
            "rid": np.arange(N, dtype=np.int64),
            "label": rng.integers(0, 2, size=N).astype(np.float32),
            "x": pa.array(dense, mask=np.isnan(dense)),
            "uid": pa.array(ids, mask=np.arange(N) % 7 == 0),
            "cat": pa.array([f"c{i % 5}" for i in range(N)]),
        }
    )


SCHEMA = Schema(
    dense=[DenseFeature(name="x", fill=-1.0, transform="standardize", mean=0.5, std=2.0)],
    sparse=[SparseFeature(name="uid"), SparseFeature(name="cat", dtype="string", table="shared")],
    labels=[LabelSpec(name="ctr", column="label")],
    extras=["rid"],
)


def _read_all(reader: Reader) -> list:
    return list(reader)


def _concat(batches: list) -> dict[str, torch.Tensor]:
    out = {
        "rid": torch.cat([b.extras["rid"] for b in batches]),
        "dense": torch.cat([b.dense for b in batches]),
        "ctr": torch.cat([b.labels["ctr"] for b in batches]),
    }
    for key in ("uid", "cat"):
        jts = [b.sparse[key] for b in batches]
        out[key] = torch.cat([j.values() for j in jts])
        out[key + "_len"] = torch.cat([j.lengths() for j in jts])
    return out


def test_parquet_orc_csv_round_trip_same_batch(tmp_path):
    table = _table()
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=16, write_page_checksum=True)
    orc.write_table(table, tmp_path / "d.orc")
    pacsv.write_csv(table, tmp_path / "d.csv")
    expected = _concat([to_batch(table, SCHEMA, "mem")])
    for fmt, name in (("parquet", "d.parquet"), ("orc", "d.orc"), ("csv", "d.csv")):
        got = _concat(_read_all(Reader(tmp_path / name, SCHEMA, 16, format=fmt)))
        for k, v in expected.items():
            assert torch.equal(got[k], v), (fmt, k)
    # the values are what the schema says: fill then standardize, null id = no id, hashed strings
    assert expected["dense"][3, 0].item() == pytest.approx((-1.0 - 0.5) / 2.0)
    assert expected["uid_len"].tolist() == [0 if i % 7 == 0 else 1 for i in range(N)]
    valid = table["uid"].drop_null().to_numpy()
    assert torch.equal(expected["uid"], torch.from_numpy(valid.copy()))
    assert expected["cat"][:2].tolist() == hash_strings(["c0", "c1"], salt="shared").tolist()


def test_criteo_tsv_with_missing_fields(tmp_path):
    lines = [
        "1\t5\t\t3" + "\t" * 10 + "\t68fd1e64" + "\t80e26c9b" * 25,
        "0" + "\t" * 13 + "\t" + "\t" * 25,  # every feature missing
        "0\t1\t2\t3\t4\t5\t6\t7\t8\t9\t10\t11\t12\t13\t" + "\t".join(["a"] * 26),
    ]
    (tmp_path / "day_0.tsv").write_text("\n".join(lines) + "\n")
    schema = Schema(
        dense=[DenseFeature(name=f"I{i}", transform="log") for i in range(1, 14)],
        sparse=[SparseFeature(name=f"C{i}", dtype="string") for i in range(1, 27)],
        labels=[LabelSpec(name="click", column="label")],
    )
    (b,) = list(Reader(tmp_path, schema, 8, format="tsv", csv=CsvOptions(layout="criteo")))
    assert len(CRITEO_COLUMNS) == 40
    assert b.labels["click"].tolist() == [1.0, 0.0, 0.0]
    assert b.dense[0, :3].tolist() == pytest.approx([np.log1p(5), 0.0, np.log1p(3)])
    assert b.dense[1].abs().sum().item() == 0.0  # missing counts filled with 0
    assert b.dense[2, 12].item() == pytest.approx(np.log1p(13))
    c1 = b.sparse["C1"]
    assert c1.lengths().tolist() == [1, 0, 1]  # empty categorical = no id
    assert c1.values().tolist() == hash_strings(["68fd1e64", "a"], salt="C1").tolist()


def test_list_columns_weighted_and_truncated(tmp_path):
    table = pa.table(
        {
            "label": pa.array([1.0, 0.0, 1.0], pa.float64()),
            "hist": pa.array([[1, 2, 3, 4], [], None], pa.list_(pa.int64())),
            "hist_w": pa.array([[0.1, 0.2, 0.3, 0.4], [], None], pa.list_(pa.float32())),
            "tags": pa.array([["a", None, "b"], ["c"], []], pa.list_(pa.string())),
            "vec": pa.array([[1.0, 2.0], None, [5.0, 6.0]], pa.list_(pa.float64())),
            "I1": pa.array([[7.0], [8.0], []], pa.list_(pa.float64())),  # RecIS Criteo layout
        }
    )
    pq.write_table(table, tmp_path / "l.parquet")
    schema = Schema(
        # an empty list is a DataError unless the feature says to fill it
        dense=[
            DenseFeature(name="vec", dim=2, fill=-1.0),
            DenseFeature(name="I1", on_empty="fill"),
        ],
        sparse=[
            SparseFeature(name="hist", max_len=2, truncate="last", weight_column="hist_w"),
            SparseFeature(name="first", column="hist", max_len=3),
            SparseFeature(name="tags", dtype="string"),
        ],
        labels=[LabelSpec(name="y", column="label")],
    )
    (b,) = list(Reader(tmp_path / "l.parquet", schema, 10))
    hist = b.sparse["hist"]
    assert hist.values().tolist() == [3, 4] and hist.lengths().tolist() == [2, 0, 0]
    assert hist.weights().tolist() == pytest.approx([0.3, 0.4])
    assert b.sparse["first"].values().tolist() == [1, 2, 3]
    tags = b.sparse["tags"]
    assert tags.lengths().tolist() == [2, 1, 0]  # null inside a list is dropped
    assert tags.values().tolist() == hash_strings(["a", "b", "c"], salt="tags").tolist()
    assert tags.weights().tolist() == [1.0, 1.0, 1.0]  # unweighted keys weigh 1
    assert b.dense.tolist() == [[1.0, 2.0, 7.0], [-1.0, -1.0, 8.0], [5.0, 6.0, 0.0]]


def test_text_feature_with_local_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    sentences = ["red running shoes", "blue phone case", "running shoes for men"]
    tok.train_from_iterator(sentences, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    fast.save_pretrained(tmp_path / "tok")
    pq.write_table(
        pa.table({"q": ["red shoes", None, "blue hat for men now"], "y": [1, 0, 1]}),
        tmp_path / "t.parquet",
    )
    schema = Schema(
        text=[TextFeature(name="q", tokenizer=str(tmp_path / "tok"), max_length=4)],
        labels=[LabelSpec(name="y")],
    )
    (b,) = list(Reader(tmp_path / "t.parquet", schema, 8))
    ids, mask = b.text["q"], b.text["q_mask"]
    assert ids.shape == (3, 4) and ids.dtype == torch.int64
    assert ids[0, :2].tolist() == [fast.convert_tokens_to_ids(t) for t in ("red", "shoes")]
    assert mask.tolist() == [[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]]
    # "hat" is unknown, "now" is cut by max_length
    assert ids[2].tolist() == fast.convert_tokens_to_ids(["blue", "[UNK]", "for", "men"])


def test_fsspec_filesystem_and_batch_to(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    with fs.open("/ds/a.parquet", "wb") as f:
        pq.write_table(_table(), f)
    batches = list(Reader("/ds", SCHEMA, 20, filesystem=fs))
    assert [b.batch_size for b in batches] == [20, 20, 10]
    moved = batches[0].to("cpu")
    assert torch.equal(moved.extras["rid"], torch.arange(20))


def test_directory_and_glob_skip_hidden_and_underscore_paths(tmp_path):
    from recis.errors import DataError
    from recis.io.paths import resolve_paths

    root = tmp_path / "out"
    for rel in (
        "part-0.parquet",
        "sub/part-1.parquet",
        "_temporary/0/part-1.parquet",
        ".ipynb_checkpoints/x.parquet",
        "sub/_tmp/y.parquet",
        "_SUCCESS",
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"a": [1]}), root / rel)
    (root / "dir.parquet").mkdir()  # a folder whose name looks like data
    want = [str(root / "part-0.parquet"), str(root / "sub" / "part-1.parquet")]
    assert resolve_paths(root) == want
    assert resolve_paths(str(root / "*")) == [str(root / "part-0.parquet")]
    assert resolve_paths(str(root / "*" / "*.parquet")) == want[1:]
    # the folder the user names may itself start with "_": only components below it count
    assert resolve_paths(root / "_temporary") == [str(root / "_temporary/0/part-1.parquet")]
    with pytest.raises(DataError, match="glob matched no file"):
        resolve_paths(str(root / "_*"))


def test_table_format_folders_are_refused_not_misread(tmp_path):
    """A Delta Lake / Iceberg folder holds files its log has removed: reading every file would
    read deleted rows, so the folder is refused with what to pass instead."""
    from recis.errors import DataError
    from recis.io import resolve_paths

    delta = tmp_path / "delta"
    (delta / "_delta_log").mkdir(parents=True)
    (delta / "_delta_log" / "00000000000000000000.json").write_text("{}\n")
    pq.write_table(pa.table({"x": [1]}), delta / "part-0.parquet")
    with pytest.raises(DataError, match=r"Delta Lake table.*current data files"):
        resolve_paths(delta)
    assert resolve_paths(delta / "part-0.parquet") == [str(delta / "part-0.parquet")]
    iceberg = tmp_path / "ice"
    (iceberg / "metadata").mkdir(parents=True)
    (iceberg / "data").mkdir()
    pq.write_table(pa.table({"x": [1]}), iceberg / "data" / "a.parquet")
    assert resolve_paths(iceberg) == [str(iceberg / "data" / "a.parquet")]  # no table metadata
    (iceberg / "metadata" / "v1.metadata.json").write_text("{}")
    with pytest.raises(DataError, match="Iceberg"):
        resolve_paths(iceberg)


def test_hive_partition_folders_are_columns(tmp_path):
    """Spark's partitionBy writes ``dt=.../country=.../part-0.parquet`` without those columns
    in the files: a schema names them like any column, each file's rows get its folders'
    values (integers as int64, Hive's default partition as null); a file's own column wins."""
    root = tmp_path / "clicks"
    folders = {
        "dt=20240101/country=de": [1.0, 0.0],
        "dt=20240102/country=fr%20x": [1.0],  # Spark escapes a space as %20
        "dt=20240102/country=__HIVE_DEFAULT_PARTITION__": [0.0, 1.0, 1.0],
    }
    for folder, ys in folders.items():
        (root / folder).mkdir(parents=True)
        pq.write_table(
            pa.table({"y": ys, "uid": list(range(len(ys)))}), root / folder / "part-0.parquet"
        )
    schema = Schema(
        sparse=[SparseFeature(name="country", dtype="string"), SparseFeature(name="uid")],
        labels=[LabelSpec(name="y")],
        extras=["dt"],
    )
    (b,) = list(Reader(root, schema, 16))
    assert b.extras["dt"].tolist() == [20240101] * 2 + [20240102] * 4
    country = b.sparse["country"]
    assert country.lengths().tolist() == [1, 1, 0, 0, 0, 1]  # files in path order; null: no id
    assert country.values().tolist() == hash_strings(["de", "de", "fr x"], salt="country").tolist()
    # a file that holds the column itself keeps its own values
    pq.write_table(
        pa.table({"y": [1.0], "uid": [9], "country": ["it"]}),
        root / "dt=20240101/country=de/part-1.parquet",
    )
    (b,) = list(Reader(root, schema, 16))
    assert (
        b.sparse["country"].values().tolist()[:3]
        == hash_strings(["de", "de", "it"], salt="country").tolist()
    )
