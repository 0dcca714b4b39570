"""LIBSVM / SVMlight text (MSLR, Yahoo! LTR, the LIBSVM site's click logs) read unchanged:
labels, query ids, sparse rows as dense columns or weighted ids, comments and blank lines,
bad lines named by file, row and line (or skipped), resume, split, and ``recis init`` ->
``recis train`` with per-query metrics."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from recis.cli import main
from recis.errors import DataError
from recis.features import DenseFeature, LabelSpec, Schema, SparseFeature
from recis.io import Reader, jsonl
from recis.io.split import guess_format, read_input

LINES = [
    "+1 qid:7 1:0.5 3:2 # doc A",
    "-1 qid:7 2:1e-1",
    "",  # a blank line is not a row
    "0 1:-3 3:.25 10:4",  # no qid
    "1 qid:8",  # no pair: every feature 0
]


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of ~1 KiB, so a file of a few hundred lines spans several."""
    monkeypatch.setattr(jsonl, "BLOCK_BYTES", 1024)


def _ranking_set(n_queries: int, seed: int) -> list[str]:
    """A learnable ranking set: the grade follows feature 3 (noisy), 12 documents a query,
    features 1-6 on every line, 7 on some (sparse)."""
    rng = np.random.default_rng(seed)
    out = []
    for q in range(n_queries):
        for _ in range(12):
            x = rng.random(6)
            grade = int(np.clip(np.floor(x[2] * 5 + rng.normal(0, 0.7)), 0, 4))
            pairs = " ".join(f"{k + 1}:{v:.4f}" for k, v in enumerate(x))
            extra = f" 7:{rng.random():.3f}" if rng.random() < 0.3 else ""
            out.append(f"{grade} qid:{1000 + q} {pairs}{extra}")
    return out


def test_lines_become_labels_query_ids_dense_columns_and_a_map(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("\n".join(LINES) + "\n")
    assert guess_format(str(path)) == "libsvm"
    t = read_input(path)
    assert t.column_names[:3] == ["label", "qid", "features"]
    assert t.column_names[3:] == [f"f{k}" for k in range(1, 11)]  # 1 .. largest index
    assert t.column("label").to_pylist() == [1.0, -1.0, 0.0, 1.0]
    assert t.column("qid").to_pylist() == [7, 7, None, 8]
    assert t.column("f3").to_pylist() == [2.0, 0.0, 0.25, 0.0]  # left out: 0
    assert t.column("f10").to_pylist() == [0.0, 0.0, 4.0, 0.0]
    got = t.column("features").to_pylist()
    assert got[0] == [(1, 0.5), (3, 2.0)] and got[3] == []
    assert got[1][0][0] == 2 and got[1][0][1] == pytest.approx(0.1)
    (tmp_path / "b.svm.gz").write_bytes(gzip.compress(path.read_bytes()))
    assert guess_format(str(tmp_path / "b.svm.gz")) == "libsvm"
    assert read_input(tmp_path / "b.svm.gz").equals(t)


def test_the_reader_gives_dense_columns_and_weighted_ids(tmp_path, small_blocks):
    lines = _ranking_set(30, 0)
    (tmp_path / "r.txt").write_text("\n".join(lines) + "\n")
    schema = Schema(
        dense=[DenseFeature(name="f3"), DenseFeature(name="f7")],
        sparse=[
            SparseFeature(name="feat", column="features.keys", weight_column="features.values")
        ],
        labels=[LabelSpec(name="label", kind="real", positive_at=2.0)],
        extras=["qid"],
    )
    batches = list(Reader(tmp_path / "r.txt", schema, 64, format="libsvm"))
    dense = torch.cat([b.dense for b in batches])
    first = lines[0].split()
    pairs = dict(p.split(":") for p in first[2:])
    assert dense[0, 0].item() == pytest.approx(float(pairs["3"]))
    assert dense[0, 1].item() == pytest.approx(float(pairs.get("7", 0.0)))
    qids = torch.cat([b.extras["qid"] for b in batches])
    assert qids.tolist() == [1000 + i // 12 for i in range(len(lines))]
    labels = torch.cat([b.labels["label"] for b in batches])
    assert labels.tolist() == [float(int(x.split()[0]) >= 2) for x in lines]
    jt = batches[0].sparse["feat"]
    assert jt.lengths()[0].item() == len(first) - 2
    assert jt.values()[: len(first) - 2].tolist() == [int(p.split(":")[0]) for p in first[2:]]
    assert jt.weights()[2].item() == pytest.approx(float(pairs["3"]))


def test_a_bad_line_is_named_or_skipped(tmp_path, small_blocks):
    lines = _ranking_set(20, 1)
    lines[100] = "2 qid:1008 1:0.5 3:abc"
    (tmp_path / "r.txt").write_text("\n".join(lines[:50] + [""] + lines[50:]) + "\n")
    schema = Schema(dense=[DenseFeature(name="f1")], labels=[LabelSpec(name="label", kind="real")])
    with pytest.raises(DataError) as err:
        list(Reader(tmp_path / "r.txt", schema, 32, format="libsvm"))
    msg = str(err.value)
    assert "r.txt" in msg and "row 100" in msg and "line 102" in msg and "3:abc" in msg
    with pytest.raises(DataError, match=r"row 100 \(line 102\)"):
        read_input(tmp_path / "r.txt")
    reader = Reader(
        tmp_path / "r.txt", schema, 32, format="libsvm", on_bad_row="skip", max_bad_fraction=0.1
    )
    values = torch.cat([b.dense[:, 0] for b in reader])
    want = [float(x.split()[2].split(":")[1]) for i, x in enumerate(lines) if i != 100]
    assert values.tolist() == pytest.approx(want)


def test_resume_mid_file_continues_with_the_same_rows(tmp_path, small_blocks):
    (tmp_path / "r.txt").write_text("\n".join(_ranking_set(20, 2)) + "\n")
    schema = Schema(dense=[DenseFeature(name="f1")], labels=[LabelSpec(name="label", kind="real")])
    whole = [b.dense for b in Reader(tmp_path / "r.txt", schema, 16, format="libsvm")]
    first = Reader(tmp_path / "r.txt", schema, 16, format="libsvm")
    it = iter(first)
    head = [next(it).dense for _ in range(5)]
    again = Reader(tmp_path / "r.txt", schema, 16, format="libsvm")
    again.load_state_dict(first.state_dict())
    assert torch.equal(torch.cat(head + [b.dense for b in again]), torch.cat(whole))


def test_init_and_train_a_ranking_set_with_per_query_metrics(tmp_path):
    """MSLR's layout: ``recis init`` names the query groups (extras and the task's group
    column), reads the features as dense columns, and the model learns the grade."""
    (tmp_path / "train.txt").write_text("\n".join(_ranking_set(120, 3)) + "\n")
    (tmp_path / "vali.txt").write_text("\n".join(_ranking_set(40, 4)) + "\n")
    out = tmp_path / "ltr.yaml"
    args = ["init", str(tmp_path / "train.txt"), "--eval", str(tmp_path / "vali.txt")]
    assert main([*args, "--label", "label", "--positive-at", "2", "--out", str(out)]) == 0
    cfg = yaml.safe_load(out.read_text())
    schema = cfg["data"]["schema"]
    assert cfg["data"]["format"] == "libsvm" and schema["extras"] == ["qid"]
    assert [d["name"] for d in schema["dense"]] == [f"f{k}" for k in range(1, 8)]
    assert "sparse" not in schema  # the map is not read beside the dense columns
    assert cfg["train"]["tasks"] == [{"name": "label", "group_column": "qid"}]
    cfg["run_dir"] = str(tmp_path / "run")
    out.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(out)]) == 0
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert result["label/auc"] > 0.8 and result["label/gauc"] > 0.8
    assert 0.0 < result["label/ndcg@10"] <= 1.0


def test_split_converts_a_file_that_comes_split_to_parquet(tmp_path, capsys):
    """MSLR's folds come split: ``--fractions 1`` writes the whole file as train.parquet."""
    (tmp_path / "train.txt").write_text("\n".join(_ranking_set(10, 5)) + "\n")
    args = ["split", str(tmp_path / "train.txt"), "--by", "order", "--fractions", "1"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.parquet")) == ["train.parquet"]
    got = pq.read_table(tmp_path / "out" / "train.parquet")
    assert got.equals(
        read_input(tmp_path / "train.txt").replace_schema_metadata(got.schema.metadata)
    )


def test_init_on_a_click_log_of_hashed_indices_reads_them_as_weighted_ids(tmp_path):
    """The LIBSVM site's Criteo layout: one-hot indices up to millions, no ``qid``: the map
    as weighted ids (dense columns would be millions wide), no query groups."""
    rng = np.random.default_rng(6)
    lines = []
    for _ in range(3000):
        idx = set(rng.integers(100, 2_000_000, 12).tolist())
        click = rng.random() < 0.5
        idx.add(7 if click else 8)  # the signal: index 7 on clicks, 8 on the others
        if rng.random() < 0.1:
            idx ^= {7, 8}  # noise
        lines.append(f"{int(click)} " + " ".join(f"{k}:1" for k in sorted(idx)))
    (tmp_path / "day.svm").write_text("\n".join(lines) + "\n")
    out = tmp_path / "c.yaml"
    args = ["init", str(tmp_path / "day.svm"), "--label", "label", "--out", str(out)]
    assert main([*args, "--run-dir", str(tmp_path / "run")]) == 0
    cfg = yaml.safe_load(out.read_text())
    schema = cfg["data"]["schema"]
    assert schema["sparse"] == [
        {"name": "features", "column": "features.keys", "weight_column": "features.values"}
    ]
    assert "dense" not in schema and "extras" not in schema and "tasks" not in cfg["train"]
    assert "#   qid: no value in the sample" in out.read_text()
    assert main(["train", str(out), "--set", "threads=1"]) == 0
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert result["label/auc"] > 0.8  # index 7 against 8: about 0.9 of the rows tell
