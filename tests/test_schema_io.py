"""Schema and DataConfig reader options: validation and the reader they build."""

from __future__ import annotations

import numpy as np
import pytest

from recis.config import DataConfig, validate
from recis.errors import ConfigError
from recis.features import Schema
from recis.io import Loader, Reader, reader_from_config

RAW_SCHEMA = {
    "labels": [{"name": "click", "column": "label"}],
    "dense": [{"name": "I1", "transform": "log"}, {"name": "emb", "dim": 4}],
    "sparse": [
        {"name": "C1", "dtype": "string", "table": "cats"},
        {"name": "hist", "max_len": 20, "truncate": "last", "weight_column": "hist_w"},
    ],
    "text": [{"name": "query", "tokenizer": "/models/tok", "max_length": 16}],
    "extras": ["user_id"],
}


def test_schema_columns_and_widths():
    schema = validate(Schema, RAW_SCHEMA)
    assert schema.columns == ["I1", "emb", "C1", "hist", "hist_w", "label", "query", "user_id"]
    assert schema.dense_dim == 5
    assert schema.sparse[0].table_name == "cats" and schema.sparse[1].truncate == "last"


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("nan_policy", "ignore", "data.nan_policy"),
        ("on_bad_row", "drop", "data.on_bad_row"),
        ("prefetch", -1, "data.prefetch"),
        ("shuffle_buffer", 0, "data.shuffle_buffer"),
        ("csv", {"layout": "kaggle"}, "data.csv.layout"),
    ],
)
def test_bad_reader_options_name_the_field(field, value, message):
    with pytest.raises(ConfigError, match=message):
        validate(DataConfig, {"schema": RAW_SCHEMA, field: value}, prefix="data")
    with pytest.raises(ConfigError, match=r"data\.schema\.sparse\.0\.truncate"):
        bad = {**RAW_SCHEMA, "sparse": [{"name": "C1", "truncate": "middle"}]}
        validate(DataConfig, {"schema": bad}, prefix="data")


def test_reader_from_config_criteo_tsv(tmp_path):
    rows = ["1\t3" + "\t" * 12 + "\t" + "\t".join(["ab"] * 26), "0" + "\t" * 39]
    (tmp_path / "day.tsv").write_text("\n".join(rows) + "\n")
    raw = {
        "schema": {
            "labels": [{"name": "click", "column": "label"}],
            "dense": [{"name": "I1"}],
            "sparse": [{"name": "C26", "dtype": "string"}],
        },
        "format": "tsv",
        "csv": {"layout": "criteo"},
        "batch_size": 4,
        "prefetch": 0,
    }
    data = validate(DataConfig, raw)
    reader = reader_from_config(data, str(tmp_path), train=True, seed=1)
    assert isinstance(reader, Reader) and reader.shuffle and reader.prefetch == 0
    (b,) = list(reader)
    assert sorted(b.dense[:, 0].tolist()) == [0.0, 3.0]
    assert sorted(b.sparse["C26"].lengths().tolist()) == [0, 1]
    loader = reader_from_config(validate(DataConfig, {**raw, "num_workers": 2}), str(tmp_path))
    assert isinstance(loader, Loader)
    assert np.isclose(sum(x.batch_size for x in loader), 2)


def test_bad_reader_arguments_name_the_argument(tmp_path):
    with pytest.raises(ConfigError, match=r"batch_size: invalid value 0; format: .*'xls'; rank"):
        Reader(tmp_path, Schema(), 0, format="xls", rank=3, world_size=2)
