"""The synthetic CTR generator: real parquet, deterministic, with a meaningful oracle."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from recis.metrics import auc
from recis.synthetic import dense_names, generate_ctr, load_info, sparse_names


def _read(path):
    return pq.read_table(sorted(path.glob("*.parquet"))).to_pydict()


def test_schema_and_files(small_ctr):
    path, info = small_ctr
    assert len(list((path / "train").glob("part-*.parquet"))) == 3
    table = pq.read_table(path / "train")
    assert table.num_rows == 20_000
    names = set(table.column_names)
    assert {"label", "p_click", *dense_names(), *sparse_names()} <= names
    assert len(dense_names()) == 13 and len(sparse_names()) == 26
    assert str(table.schema.field("C1").type) == "int64"
    # Criteo-like missing dense counts
    nulls = table.column("I1").null_count / table.num_rows
    assert 0.03 < nulls < 0.07
    assert load_info(path).oracle_auc == info.oracle_auc


def test_power_law_ids(small_ctr):
    path, _ = small_ctr
    ids = pq.read_table(path / "train", columns=["C7"]).column("C7").to_numpy()
    counts = np.sort(np.bincount(ids))[::-1]
    # the most frequent id is far more frequent than the median one
    assert counts[0] > 50 * max(1, np.median(counts[counts > 0]))


def test_deterministic_by_seed(tmp_path):
    a = generate_ctr(tmp_path / "a", num_train=2000, num_eval=500, files=2, seed=3)
    b = generate_ctr(tmp_path / "b", num_train=2000, num_eval=500, files=2, seed=3)
    generate_ctr(tmp_path / "c", num_train=2000, num_eval=500, files=2, seed=4)
    assert a.oracle_auc == b.oracle_auc
    da, db, dc = (_read(tmp_path / s / "train") for s in "abc")
    assert da == db
    assert da["C1"] != dc["C1"]


def test_oracle_auc_is_auc_of_true_probability(small_ctr):
    path, info = small_ctr
    t = pq.read_table(path / "eval", columns=["label", "p_click"])
    expected = auc(t.column("p_click").to_numpy(), t.column("label").to_numpy())
    assert abs(info.oracle_auc - expected) < 1e-12
    # the labels carry signal, and the clicks are drawn from p_click
    assert 0.8 < info.oracle_auc < 0.97
    assert abs(t.column("label").to_numpy().mean() - t.column("p_click").to_numpy().mean()) < 0.02


def test_auc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 300).astype(float)  # many ties
    y = rng.integers(0, 2, 300)
    pos, neg = s[y == 1], s[y == 0]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert abs(auc(s, y) - pairs) < 1e-12
    assert auc(s, np.ones_like(y)) is None  # one class: not applicable (recis.metrics), never nan
