"""Text read as a bag of hashed term ids (``SparseFeature.tokenizer``): the id path of every
model (DLRM, DeepFM, HHFT, the towers) fed by raw queries and titles, in any script."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from recis.cli import main
from recis.errors import DataError
from recis.export.rows import request_batch
from recis.features import LabelSpec, Schema, SparseFeature
from recis.io import Reader
from recis.io.tokenizers import ngram_terms
from recis.ops.hashing import hash_strings


def _ids(terms: list[str]) -> list[int]:
    return hash_strings(terms, salt="text").tolist()


def test_a_tokenized_id_feature_is_the_bag_of_its_terms(tmp_path) -> None:
    pq.write_table(
        pa.table(
            {
                "q": ["Red shoes, RED!", None, "", "红色跑鞋"],
                "t": [["red", "shoe"], None, [], ["跑鞋 特价"]],
                "y": [1.0, 0.0, 1.0, 0.0],
            }
        ),
        tmp_path / "t.parquet",
    )
    words1 = {"kind": "ngram", "words": 1}
    schema = Schema(
        sparse=[
            SparseFeature(name="q", tokenizer={"kind": "ngram", "words": 2}, max_len=6),
            SparseFeature(name="t", tokenizer=words1),
        ],
        labels=[LabelSpec(name="y")],
    )
    (b,) = list(Reader(tmp_path / "t.parquet", schema, 8))
    q, t = b.sparse["q"], b.sparse["t"]
    # normalised (NFKC, lowercase) word 1-2-grams in order; a null or empty text: no id;
    # Chinese: each character a word, so its 1-2-grams; max_len keeps the first 6
    chinese = ["红", "色", "红色", "跑", "色跑", "鞋"]
    assert q.lengths().tolist() == [5, 0, 0, 6]
    assert q.values().tolist() == _ids(["red", "shoes", "red shoes", "red", "shoes red"] + chinese)
    # a list<string> row is its strings joined by spaces; the same term, the same id
    assert t.lengths().tolist() == [2, 0, 0, 4]
    assert t.values().tolist() == _ids(["red", "shoe", "跑", "鞋", "特", "价"])
    assert t.values()[0] == q.values()[0]
    assert ngram_terms("红色跑鞋", 2, [])[:6] == chinese
    # a served request's JSON rows become the same ids (serving converts as training does)
    rows = [{"q": "Red shoes, RED!", "t": ["red", "shoe"], "y": 1}, {"q": None, "t": None, "y": 0}]
    served = request_batch(rows, schema, "fill").sparse
    assert served["q"].values().tolist() == q.values()[:5].tolist()
    assert served["t"].lengths().tolist() == [2, 0]


def test_tokenizer_config_and_column_errors_name_the_field(tmp_path) -> None:
    # (pydantic's ValueError; the config loader prints it as one line under its field path)
    with pytest.raises(ValueError, match=r"sparse\.q\.tokenizer: .*drop separator, dtype"):
        SparseFeature(name="q", tokenizer={"kind": "ngram"}, separator=" ", dtype="string")
    pq.write_table(pa.table({"q": [1, 2], "y": [1.0, 0.0]}), tmp_path / "n.parquet")
    schema = Schema(
        sparse=[SparseFeature(name="q", tokenizer={"kind": "ngram"})],
        labels=[LabelSpec(name="y")],
    )
    with pytest.raises(DataError, match=r"n\.parquet.*column 'q'.*text for the tokenizer"):
        list(Reader(tmp_path / "n.parquet", schema, 8))


# brands and products; a pair is relevant when the title names the query's product
PRODUCTS = ["跑鞋", "手机壳", "充电器", "背包", "耳机", "水杯", "台灯", "雨伞", "钱包", "键盘"]
BRANDS = ["红星", "蓝海", "青山", "白云", "金石", "银河", "东方", "南风", "北辰", "西岭", "紫竹"]


def _pairs(seed: int, n: int, brands: list[str]) -> pa.Table:
    rng = np.random.default_rng(seed)
    q, t, y = [], [], []
    for _ in range(n):
        brand = brands[rng.integers(len(brands))]
        product = PRODUCTS[rng.integers(len(PRODUCTS))]
        match = rng.random() < 0.5
        shown = product if match else PRODUCTS[rng.integers(len(PRODUCTS))]
        q.append(f"{brand}{product}")
        t.append(f"{brand}{shown}正品特价包邮{rng.integers(1, 99)}款")
        y.append(int(shown == product))
    return pa.table({"query": q, "title": t, "click": y})


def test_init_reads_chinese_text_as_terms_and_the_model_ranks_unseen_queries(
    tmp_path, capsys
) -> None:
    # train and eval queries share no brand, so no eval query or title string was seen in
    # training: only their terms and their lexical match carry over (one hashed id per
    # string, the config recis init wrote before it read text, scores AUC 0.5)
    pq.write_table(_pairs(0, 3000, BRANDS[:8]), tmp_path / "train.parquet")
    pq.write_table(_pairs(1, 800, BRANDS[8:]), tmp_path / "valid.parquet")
    out, run = tmp_path / "rel.yaml", tmp_path / "run"
    args = ["init", str(tmp_path / "train.parquet"), "--label", "click"]
    args += ["--eval", str(tmp_path / "valid.parquet"), "--out", str(out), "--run-dir", str(run)]
    assert main(args) == 0
    cfg = yaml.safe_load(out.read_text())
    sparse = {e["name"]: e for e in cfg["data"]["schema"]["sparse"]}
    assert sparse["query"]["tokenizer"] == {"kind": "ngram", "words": 2}
    assert sparse["title"]["tokenizer"] == {"kind": "ngram", "words": 2}
    assert sparse["title"]["table"] == "query"  # the query's terms are the title's
    assert [t["name"] for t in cfg["model"]["tables"]] == ["query"]
    assert "text: its characters and character pairs" in out.read_text()
    # the pair's lexical match, its statistics fitted when training starts
    (match,) = cfg["data"]["schema"]["dense"]
    stats = f"{run}/query_title_match.safetensors"
    assert match["lexical"] == {"query": "query", "title": "title", "stats": stats}
    capsys.readouterr()
    sets = ["threads=1", "train.epochs=4", "train.sparse_optimizer.lr=0.05"]
    assert main(["train", str(out), *(a for s in sets for a in ("--set", s))]) == 0
    assert f"lexical statistics: 3000 pairs -> {stats}" in capsys.readouterr().out
    assert json.loads((run / "eval.json").read_text())["click/auc"] > 0.9


def test_init_writes_a_deepbow_config_for_a_relevance_log(tmp_path, capsys) -> None:
    pq.write_table(_pairs(0, 3000, BRANDS[:8]), tmp_path / "train.parquet")
    pq.write_table(_pairs(1, 800, BRANDS[8:]), tmp_path / "valid.parquet")
    out, run = tmp_path / "rel.yaml", tmp_path / "run"
    args = ["init", str(tmp_path / "train.parquet"), "--label", "click", "--model", "deepbow"]
    args += ["--eval", str(tmp_path / "valid.parquet"), "--out", str(out), "--run-dir", str(run)]
    assert main(args) == 0
    assert "1 dense, 0 id, 2 text features" in capsys.readouterr().out
    cfg = yaml.safe_load(out.read_text())
    schema = cfg["data"]["schema"]
    assert [t["name"] for t in schema["text"]] == ["query", "title"] and "sparse" not in schema
    assert [d["name"] for d in schema["dense"]] == ["query_title_match"]
    model = cfg["model"]
    assert (model["name"], model["query_text"], model["product_text"]) == (
        "deepbow",
        "query",
        "title",
    )
    assert model["max_len"] <= model["bag_size"]  # the pairwise scoring path
    assert main(["train", str(out), "--set", "threads=1", "--set", "train.epochs=3"]) == 0
    assert json.loads((run / "eval.json").read_text())["click/auc"] > 0.9
    # a log without a query and a title: one line saying what is missing
    pq.write_table(
        pa.table({"click": [0, 1] * 50, "shop": [f"s{i}" for i in range(100)]}),
        tmp_path / "ads.parquet",
    )
    args = ["init", str(tmp_path / "ads.parquet"), "--label", "click", "--model", "deepbow"]
    assert main([*args, "--out", str(tmp_path / "ads.yaml")]) == 2
    assert capsys.readouterr().err == (
        "recis: error: --model deepbow: needs a query and a title text column (no text column)\n"
    )
