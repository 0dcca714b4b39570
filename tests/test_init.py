"""``recis init``: a run config read off a log's columns, that ``recis train`` then trains."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from recis.cli import main
from recis.config import load_config
from recis.errors import ConfigError, DataError
from recis.io.infer import infer_schema
from recis.recipe import init_config

N = 3000


def _log(seed: int, n: int = N) -> pa.Table:
    """An ad log with one column of every kind the rules tell apart."""
    rng = np.random.default_rng(seed)
    ctr = rng.random(n)
    items = rng.integers(1, 400, n)
    hist = [rng.choice(items, size=int(k)).tolist() for k in rng.integers(0, 40, n)]
    age = rng.integers(18, 60, n).astype(float)
    age[::17] = np.nan  # pandas' int column with a missing value
    words = ["red", "running", "shoes", "for", "men", "women", "light", "trail", "size", "ten"]
    return pa.table(
        {
            "click": (rng.random(n) < ctr).astype(np.int64),
            "user_id": rng.integers(0, 2000, n),
            "itemId": items,
            "hist_items": pa.array(hist, pa.list_(pa.int64())),
            "price": np.round(rng.lognormal(3, 1.5, n), 2),
            "ctr_7d": ctr,
            "hour": rng.integers(0, 24, n),
            "age": age,
            "cate": [f"c{k}" for k in rng.integers(0, 30, n)],
            "tags": ["|".join(f"t{k}" for k in rng.integers(0, 50, 3)) for _ in range(n)],
            "title": [" ".join(rng.choice(words, 6)) for _ in range(n)],
            "request_id": [f"r{i:08d}" for i in range(n)],
            "ts": np.arange(n, dtype=np.int64) + 1_700_000_000,
            "event_time": pa.array(np.arange(n) * 1_000_000, pa.timestamp("us")),
            "site": ["s"] * n,
            "emb": pa.array(rng.normal(size=(n, 4)).tolist(), pa.list_(pa.float32())),
            "scores": pa.array(
                [[(f"k{k}", float(k)) for k in rng.integers(0, 9, 2)] for _ in range(n)],
                pa.map_(pa.string(), pa.float32()),
            ),
        }
    )


def _entries(cfg: dict, section: str) -> dict[str, dict]:
    return {e["name"]: e for e in cfg["data"]["schema"].get(section, [])}


def test_init_writes_a_config_that_trains(tmp_path, capsys):
    train, valid = tmp_path / "train.parquet", tmp_path / "valid.parquet"
    pq.write_table(_log(0), train)
    pq.write_table(_log(1, 1000), valid)
    out = tmp_path / "ads.yaml"
    run = tmp_path / "run"
    args = ["init", str(train), "--label", "click", "--eval", str(valid), "--out", str(out)]
    assert main([*args, "--run-dir", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "request_id, ts, event_time, site" in printed and f"recis train {out}" in printed
    text = out.read_text()
    cfg = yaml.safe_load(text)
    dense, sparse = _entries(cfg, "dense"), _entries(cfg, "sparse")
    assert _entries(cfg, "labels") == {"click": {"name": "click"}}
    # numbers: heavy-tailed ones bucketed by quantiles, the others standardised
    assert dense["price"]["transform"] == "quantile" and len(dense["price"]["boundaries"]) == 15
    assert dense["ctr_7d"]["transform"] == "standardize"
    assert dense["ctr_7d"]["mean"] == pytest.approx(0.5, abs=0.03)
    assert dense["emb"] == {"name": "emb", "dim": 4, "on_empty": "fill"}
    # ids: by name, few whole values (float too), strings, joined ids, text, lists, maps
    assert set(sparse) == {
        "user_id", "itemId", "hist_items", "hour", "age", "cate", "tags", "title", "scores"
    }  # fmt: skip
    assert sparse["tags"]["separator"] == "|"
    # text: its words as a bag of hashed terms (6 a row: max_len is its floor, 16)
    word_bag = {"kind": "ngram", "words": 1}
    assert sparse["title"] == {"name": "title", "tokenizer": word_bag, "max_len": 16}
    assert sparse["hist_items"]["table"] == "itemId"  # the sequence reads the item table
    assert sparse["hist_items"]["max_len"] == 39 and sparse["hist_items"]["truncate"] == "last"
    assert sparse["scores"] == {
        "name": "scores", "column": "scores.keys", "weight_column": "scores.values"
    }  # fmt: skip
    tables = {t["name"]: t for t in cfg["model"]["tables"]}
    assert "hist_items" not in tables and tables["itemId"]["pooling"] == "mean"
    assert tables["hour"]["capacity"] == 64 and tables["user_id"]["growable"] is True
    # every choice says why, and the keys and times are named as not read
    assert "# heavy-tailed" in text and "# named as ids" in text
    assert "#   request_id: 3000 values in 3000 rows: a key" in text
    assert "#   ts: named as a time" in text and "#   event_time: timestamp[us]" in text
    assert cfg["train"]["early_stopping"]["metric"] == "click/auc"
    assert cfg["train"]["schedule"]["total_steps"] == 10 * 6  # 3000 rows / 512, 10 epochs
    # and recis train trains it as written
    assert main(["train", str(out), "--set", "threads=1", "--set", "train.epochs=3"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["click/auc"] > 0.65  # the click rate is ctr_7d: its AUC is about 0.75
    capsys.readouterr()
    assert main(args) == 2  # a config is never overwritten
    assert f"recis: error: {out}: exists" in capsys.readouterr().err


def test_labels_that_are_not_0_1_need_a_threshold(tmp_path):
    t = pa.table({"rating": [1.0, 4.5, 3.0, 5.0], "movie": [1, 2, 3, 4], "x": [0.1, 0.2, 0.3, 0.9]})
    with pytest.raises(
        ConfigError, match=r"--label rating: values 1, 3, 4.5, 5 are not 0/1.*--positive-at"
    ):
        infer_schema(t, ["rating"])
    (label, *_) = infer_schema(t, ["rating"], positive_at=4)
    assert label.spec == {"name": "rating", "kind": "real", "positive_at": 4}
    with pytest.raises(ConfigError, match=r"--label clicked: no such column"):
        infer_schema(t, ["clicked"])
    with pytest.raises(ConfigError, match=r"--positive: --label rating holds numbers"):
        infer_schema(t, ["rating"], positive=["5"])
    flags = infer_schema(pa.table({"y": [0, 1] * 5, "is_new": [True, False] * 5}), ["y"])
    assert flags[1].spec == {"name": "is_new", "fill": 0.5} and "a flag" in flags[1].why
    with pytest.raises(DataError, match="no column is left to be a feature"):
        infer_schema(pa.table({"y": [0, 1], "k": [5, 5]}), ["y"])


def test_a_string_label_is_1_for_the_values_named_positive(tmp_path):
    """Taobao's ``behavior_type`` (pv, cart, fav, buy): ``--positive buy cart`` writes the
    label's ``values`` map, which the reader applies."""
    from recis.config import load_config
    from recis.io import reader_from_config

    kinds = ["pv", "pv", "cart", "pv", "buy", "fav", "pv", "buy"] * 40
    f = tmp_path / "behavior.parquet"
    n = len(kinds)
    pq.write_table(pa.table({"behavior_type": kinds, "user_id": np.arange(n) % 37}), f)
    t = pq.read_table(f)
    with pytest.raises(
        ConfigError, match=r"--label behavior_type: strings \(buy, cart, fav, pv\); pass --positive"
    ):
        infer_schema(t, ["behavior_type"])
    with pytest.raises(ConfigError, match=r"--positive click: no value of --label behavior_type"):
        infer_schema(t, ["behavior_type"], positive=["click"])
    out = tmp_path / "b.yaml"
    args = ["init", str(f), "--label", "behavior_type", "--positive", "buy", "cart"]
    assert main([*args, "--out", str(out)]) == 0
    cfg = yaml.safe_load(out.read_text())
    label = _entries(cfg, "labels")["behavior_type"]
    assert label["values"] == {"buy": 1.0, "cart": 1.0, "fav": 0.0, "pv": 0.0}
    assert "strings: 1 for buy, cart, 0 for the other 2 in the sample" in out.read_text()
    run = load_config(out)
    (batch, *_) = reader_from_config(run.data, run.data.train, train=False)
    want = [float(k in ("buy", "cart")) for k in kinds]
    assert batch.labels["behavior_type"].tolist() == want[: batch.batch_size]


def test_names_in_other_scripts_are_kept_and_written_as_they_read(tmp_path):
    """A Chinese header stays the features' and tables' names (spaces and dashes become
    ``_``), and the YAML holds the characters, not ``\\u`` escapes."""
    rng = np.random.default_rng(2)
    f = tmp_path / "cn.csv"
    rows = ["是否点击,用户ID,商品 类目,价格"] + [
        f"{i % 2},{rng.integers(0, 200)},c{rng.integers(0, 20)},{rng.random() * 100:.2f}"
        for i in range(400)
    ]
    f.write_text("\n".join(rows) + "\n")
    out = tmp_path / "cn.yaml"
    assert main(["init", str(f), "--label", "是否点击", "--out", str(out)]) == 0
    text = out.read_text()
    assert "\\u" not in text and "{name: 商品_类目, column: 商品 类目}" in text
    cfg = yaml.safe_load(text)
    assert set(_entries(cfg, "labels")) == {"是否点击"}
    assert set(_entries(cfg, "sparse")) == {"用户ID", "商品_类目"}
    assert set(_entries(cfg, "dense")) == {"价格"}
    assert {t["name"] for t in cfg["model"]["tables"]} == {"用户ID", "商品_类目"}


def test_rows_without_a_label_are_skipped_and_counted(tmp_path):
    """A log whose label is missing on some rows (null, NaN, an empty RecIS list) trains
    with those rows left out (``on_bad_row: skip``), its ``max_bad_fraction`` twice the
    sample's share rounded up to a percent; a list of structs whose fields include a time
    (``behaviors.ts``) is read field by field (before: ``count_distinct`` had no kernel for
    the list, and init stopped)."""
    from recis.config import load_config
    from recis.io import reader_from_config

    rng = np.random.default_rng(4)
    n = 1000
    click = [None if i % 50 == 0 else float(rng.random() < 0.3) for i in range(n)]
    click[7] = float("nan")
    seq = [
        [
            {"item": int(x), "ts": 10**9 + int(x) * 1000 + j}
            for j, x in enumerate(rng.integers(0, 300, 5))
        ]
        for _ in range(n)
    ]
    behaviors = pa.array(seq, pa.list_(pa.struct([("item", pa.int64()), ("ts", pa.int64())])))
    f = tmp_path / "log.parquet"
    pq.write_table(
        pa.table({"click": click, "item_id": rng.integers(0, 300, n), "behaviors": behaviors}), f
    )
    out = tmp_path / "c.yaml"
    assert main(["init", str(f), "--label", "click", "--out", str(out)]) == 0
    cfg = yaml.safe_load(out.read_text())
    assert cfg["data"]["on_bad_row"] == "skip" and cfg["data"]["max_bad_fraction"] == 0.05
    assert "2.10% of the sampled rows have none: skipped" in out.read_text()
    assert _entries(cfg, "sparse")["behaviors_item"]["column"] == "behaviors.item"
    assert "behaviors_ts" not in _entries(cfg, "sparse")  # a time: for splitting
    run = load_config(out)
    reader = reader_from_config(run.data, run.data.train, train=False)
    assert sum(b.batch_size for b in reader) == n - 21

    recis = pa.array([[1.0], [], [0.0], None, [float("nan")]], pa.list_(pa.float64()))
    (label, *_) = infer_schema(pa.table({"y": recis, "k": [1, 2, 3, 4, 5]}), ["y"])
    assert label.missing == pytest.approx(3 / 5)


def test_a_trailing_delimiter_s_unnamed_column_is_shown_by_name(tmp_path, capsys):
    f = tmp_path / "trail.csv"
    f.write_text("y,k,\n" + "".join(f"{i % 2},k{i % 9},\n" for i in range(100)))
    out = tmp_path / "c.yaml"
    assert main(["init", str(f), "--label", "y", "--out", str(out)]) == 0
    assert '1 columns not read (""); train with' in capsys.readouterr().out
    assert '    #   "": null: no value recis reads as a feature' in out.read_text()


def test_wide_and_exact_types_from_spark_and_hive(tmp_path):
    """uint64 ids above 2^63 (the RecIS layout's hashed ids) stay distinct ids (as floats
    they were one value, and the column was dropped); decimals are dense, dates times."""
    rng = np.random.default_rng(0)
    n = 2000
    ids = np.uint64(2**63) + (rng.integers(0, 1000, n).astype(np.uint64) * np.uint64(7919))
    t = pa.table(
        {
            "label": pa.array(rng.integers(0, 2, n).astype(np.int8)),
            "price": pa.array([f"{x:.2f}" for x in rng.random(n) * 100]).cast(pa.decimal128(10, 2)),
            "dt": pa.array(rng.integers(19000, 19030, n).astype(np.int32)).cast(pa.date32()),
            "item_id": pa.array(ids, pa.uint64()),
        }
    )
    got = {c.column: c for c in infer_schema(t, ["label"])}
    distinct = len(np.unique(ids))  # 859 of the 1,000
    assert got["item_id"].section == "sparse" and len(got["item_id"].ids.unique()) == distinct
    assert got["item_id"].table["capacity"] == 2048  # a power of two above twice them
    assert got["price"].section == "dense" and got["dt"].section == "skip"


def test_a_log_of_dense_columns_only_trains_a_dlrm(tmp_path):
    """No column becomes an id: DLRM is its MLPs and wide term (before, its embedding lookup
    stopped with 'no pooled tables'); DeepFM, an FM over ids, is refused in one line."""
    from recis.models import DeepFM, DeepFMConfig

    rng = np.random.default_rng(1)
    n = 3000
    x = rng.normal(size=(n, 3))
    y = (x[:, 0] - x[:, 1] + 0.5 * rng.normal(size=n) > 0).astype(np.int64)
    f = tmp_path / "dense.parquet"
    pq.write_table(pa.table({"y": y, "a": x[:, 0], "b": x[:, 1], "c": x[:, 2]}), f)
    out = tmp_path / "d.yaml"
    with pytest.raises(ConfigError, match="--model deepfm: no column became an id feature"):
        init_config(str(f), ["y"], out, model="deepfm")
    assert main(["init", str(f), "--label", "y", "--eval", str(f), "--out", str(out)]) == 0
    run = tmp_path / "run"
    assert main(["train", str(out), "--set", f"run_dir={run}"]) == 0
    assert json.loads((run / "eval.json").read_text())["y/auc"] > 0.85
    schema = load_config(out).data.schema_
    with pytest.raises(ConfigError, match="deepfm needs id features"):
        DeepFM(DeepFMConfig(tables=[]), schema, torch.device("cpu"))


def test_init_on_a_csv_keeps_its_parsing_options(tmp_path):
    f = tmp_path / "log.csv"
    rows = ["y;price;shop"] + [f"{i % 2};{i},5;s{i % 7}" for i in range(200)]
    f.write_text("\n".join(rows) + "\n")
    out = tmp_path / "c.yaml"
    csv = "{delimiter: ';', decimal_point: ','}"
    assert main(["init", str(f), "--label", "y", "--csv", csv, "--out", str(out)]) == 0
    cfg = yaml.safe_load(out.read_text())
    assert cfg["data"]["format"] == "csv"
    assert cfg["data"]["csv"] == {"delimiter": ";", "decimal_point": ","}
    assert _entries(cfg, "dense")["price"]["mean"] == pytest.approx(100.0)  # 0,5 ... 199,5
    # no --eval: the last 10% of the rows evaluate each epoch, early stopping on them
    assert cfg["data"]["holdout"] == 0.1 and cfg["train"]["early_stopping"]["metric"] == "y/auc"
    assert cfg["train"]["schedule"]["total_steps"] == 10  # 180 rows trained on: 1 step an epoch
    assert Path(out).read_text().count("# No --eval") == 1


def test_init_on_a_criteo_tsv_keeps_the_layouts_types(tmp_path):
    # the Criteo layout declares the label a float and the counts integers: the sample keeps
    # those types (before, its 0/1 label came back as text: "--label label: string values")
    rng = np.random.default_rng(0)
    lines = [
        "\t".join(
            [str(i % 2)]
            + [str(int(rng.integers(0, 500))) if i % 5 else "" for _ in range(13)]
            + [format(int(rng.integers(0, 90)), "08x") for _ in range(26)]
        )
        for i in range(300)
    ]
    f = tmp_path / "day_0.tsv"
    f.write_text("\n".join(lines) + "\n")
    out = tmp_path / "c.yaml"
    assert (
        main(["init", str(f), "--label", "label", "--csv", "{layout: criteo}", "--out", str(out)])
        == 0
    )
    cfg = yaml.safe_load(out.read_text())
    assert _entries(cfg, "labels") == {"label": {"name": "label"}}
    assert set(_entries(cfg, "dense")) == {f"I{i}" for i in range(1, 14)}
    assert set(_entries(cfg, "sparse")) == {f"C{i}" for i in range(1, 27)}
    # Criteo's own train.txt, without the layout: the error names it
    txt = tmp_path / "train.txt"
    txt.write_text(f.read_text())
    with pytest.raises(
        ConfigError, match=r"no header line .*a Criteo log\? --csv '\{layout: criteo\}'"
    ):
        init_config(str(txt), ["label"], tmp_path / "t.yaml")


def test_init_on_json_lines_reads_dict_features_as_weighted_ids(tmp_path):
    """A JSON object whose keys are data (tag -> score, a few of 30 a row) is one weighted id
    feature; an object of a few fields (``ctx``) is read field by field."""
    rng = np.random.default_rng(3)
    f = tmp_path / "events.jsonl"
    with open(f, "w") as out:
        for i in range(600):
            tags = {f"tag{k}": round(float(rng.random()), 2) for k in rng.choice(30, 3)}
            ctx = {"hour": int(rng.integers(0, 24)), "os": ["ios", "android"][i % 2]}
            row = {"y": int(rng.random() < 0.3), "price": float(rng.random()), "tags": tags}
            out.write(json.dumps(row | {"ctx": ctx}) + "\n")
    cfg_path = tmp_path / "j.yaml"
    assert main(["init", str(f), "--label", "y", "--out", str(cfg_path)]) == 0
    cfg = yaml.safe_load(cfg_path.read_text())
    sparse = _entries(cfg, "sparse")
    assert sparse["tags"] == {
        "name": "tags", "column": "tags.keys", "weight_column": "tags.values"
    }  # fmt: skip
    assert sparse["ctx_hour"]["column"] == "ctx.hour" and sparse["ctx_os"]["column"] == "ctx.os"
    assert cfg["data"]["format"] == "jsonl" and "price" in _entries(cfg, "dense")
    run = tmp_path / "run"
    overrides = ["--set", f"run_dir={run}", "--set", "threads=1", "--set", "train.epochs=1"]
    assert main(["train", str(cfg_path), *overrides]) == 0
    assert (run / "checkpoints" / "final").is_dir()


def test_rows_of_text_files_beyond_the_sample_are_estimated_by_size(tmp_path):
    """A CSV has no footer: the files the sample read are counted, the others scaled by
    their size, so the schedule spans the whole training set."""
    from recis.io.paths import resolve_paths
    from recis.recipe import _count_rows, sample

    for k in range(4):  # four files of 500 rows, the same width
        rows = ["y,x"] + [f"{i % 2},{1000 + i}" for i in range(500)]
        (tmp_path / f"part-{k}.csv").write_text("\n".join(rows) + "\n")
    files = resolve_paths(str(tmp_path), (".csv",))
    table, read, in_read = sample(files, "csv", None, 700)
    assert table.num_rows == 700 and len(read) == 2 and in_read == 1000
    assert _count_rows(files, "csv", read, in_read) == 2000


def test_a_struct_field_named_values_is_a_field_not_map_weights():
    """Only a map's ``values`` weigh its keys: a struct may have a field of that name."""
    stats = pa.array(
        [{"values": i / 7, "n": i % 3} for i in range(50)],
        pa.struct([("values", pa.float64()), ("n", pa.int64())]),
    )
    t = pa.table({"y": [i % 2 for i in range(50)], "stats": stats})
    by = {c.column: c.section for c in infer_schema(t, ["y"])}
    assert by["stats.values"] == "dense" and by["stats.n"] == "sparse"


def test_names_of_ids_and_times_and_time_named_categories():
    n = 2000
    rng = np.random.default_rng(0)
    table = pa.table(
        {
            "click": rng.integers(0, 2, n),
            "hour": 14102100 + rng.integers(0, 10, n) * 100 + rng.integers(0, 24, n),  # Avazu
            "hour_of_day": rng.integers(0, 24, n),
            "day": rng.integers(0, 7, n),
            "unixReviewTime": 1_400_000_000 + rng.integers(0, 10**6, n),  # camelCase names
            "asinId": rng.integers(0, 900, n) * 7,
            "uid": rng.integers(0, 500, n),
            "paid": rng.integers(0, 1000, n),  # a word ending in "id" is no id
            "用户ID": rng.integers(0, 700, n),  # a Chinese schema's ids
            "商品id": rng.integers(0, 700, n),
        }
    )
    got = {c.column: (c.section, c.why) for c in infer_schema(table, ["click"])}
    assert got["用户ID"] == got["商品id"] == ("sparse", "named as ids")
    assert got["unixReviewTime"][0] == "skip" and got["paid"] == ("dense", "number: standardised")
    assert got["asinId"] == got["uid"] == ("sparse", "named as ids")
    assert got["hour"] == ("skip", "named as a time: for splitting (recis split --by time)")
    assert got["day"] == ("sparse", "7 whole values: categorical ids")
    assert got["hour_of_day"] == ("sparse", "24 whole values: categorical ids")


def test_init_and_split_read_a_movielens_1m_dat_file(tmp_path, capsys):
    """``ratings.dat`` as MovieLens 1M ships it: ``::`` between fields, no header line, a
    suffix that names no format. The format, the delimiter and the missing header are read
    off the file; the labels need the columns' names, and the error gives the line to pass."""
    from recis.config import load_config
    from recis.io import reader_from_config

    rng = np.random.default_rng(5)
    rows = [
        (
            int(rng.integers(1, 60)),
            int(rng.integers(1, 300)),
            int(rng.integers(1, 6)),
            978300760 + i,
        )
        for i in range(600)
    ]
    f = tmp_path / "ratings.dat"
    f.write_text("".join(f"{u}::{m}::{r}::{t}\n" for u, m, r, t in rows))
    out = tmp_path / "ml.yaml"
    assert main(["init", str(f), "--label", "rating", "--out", str(out)]) != 0
    msg = capsys.readouterr().err.strip()
    assert "no header line (the first line is data: '" in msg and "\n" not in msg
    hint = json.loads(msg.split("--csv '")[1].split("'")[0])
    assert hint == {"delimiter": "::", "header": False, "column_names": ["f0", "f1", "f2", "f3"]}
    assert not out.exists()

    csv = json.dumps({"column_names": ["user_id", "movie_id", "rating", "timestamp"]})
    args = ["init", str(f), "--csv", csv, "--label", "rating", "--positive-at", "4"]
    assert main([*args, "--out", str(out)]) == 0
    cfg = yaml.safe_load(out.read_text())
    assert cfg["data"]["format"] == "csv"
    assert cfg["data"]["csv"]["delimiter"] == "::" and cfg["data"]["csv"]["header"] is False
    assert set(_entries(cfg, "sparse")) == {"user_id", "movie_id"}
    run = load_config(out)
    batch = next(iter(reader_from_config(run.data, run.data.train, train=False)))
    assert batch.labels["rating"].tolist()[:20] == [float(r >= 4) for _, _, r, _ in rows[:20]]

    split = tmp_path / "split"
    by_time = ["split", str(f), "--by", "time", "--time", "timestamp", "--out", str(split)]
    assert main([*by_time, "--csv", csv, "--fractions", "0.8", "0.2"]) == 0
    train = pq.read_table(split / "train.parquet")
    assert train.num_rows == 480 and train.column("rating").to_pylist()[:3] == [
        r for _, _, r, _ in rows[:3]
    ]


def test_the_format_of_a_file_without_a_known_suffix_is_read_off_its_bytes(tmp_path):
    from recis.io.split import guess_format

    table = pa.table({"a": [1, 2]})
    pq.write_table(table, tmp_path / "part-00000")
    import pyarrow.orc as paorc

    paorc.write_table(table, tmp_path / "000000_0")
    (tmp_path / "events.log").write_text('{"a": 1}\n{"a": 2}\n')
    (tmp_path / "ratings.dat").write_text("1::2\n")
    got = {
        n: guess_format(tmp_path / n)
        for n in ("part-00000", "000000_0", "events.log", "ratings.dat")
    }
    assert got == {
        "part-00000": "parquet",
        "000000_0": "orc",
        "events.log": "jsonl",
        "ratings.dat": "csv",
    }
    assert guess_format(tmp_path / "x.parquet") == "parquet"  # by suffix, need not exist
    # compressed text: by the suffix under the compression's, or by the decompressed bytes
    from recis.io.paths import SUFFIXES, resolve_paths
    from recis.io.split import read_input

    text = "y\tk\n1\t2\n0\t3\n"
    for name, codec in (
        ("log.tsv.bz2", "bz2"),
        ("log.tsv.zst", "zstd"),
        ("ratings.dat.gz", "gzip"),
    ):
        with pa.CompressedOutputStream(str(tmp_path / name), codec) as out:
            out.write(text.encode())
    assert guess_format(tmp_path / "log.tsv.bz2") == guess_format(tmp_path / "log.tsv.zst") == "tsv"
    assert guess_format(tmp_path / "ratings.dat.gz") == "csv"
    assert read_input(tmp_path / "log.tsv.zst").column("k").to_pylist() == [2, 3]
    listed = [Path(f).name for f in resolve_paths(tmp_path, SUFFIXES["tsv"])]
    assert listed == ["log.tsv.bz2", "log.tsv.zst"]
    assert guess_format(tmp_path) == "parquet"  # a folder: its parts' format is not sniffed


def test_sniffing_a_delimiter_prefers_the_one_between_columns(tmp_path):
    from recis.io.csv_options import sniff

    cases = {
        "id,tags,score\n1,a||b||c,0.5\n2,c||d||e,0.7\n": (",", True),
        "1::Toy Story (1995)::Animation|Comedy\n2::Heat, The (1995)::Crime\n": ("::", False),
        "query\ttitle\nred shoes\tnike red\nblue\tthing\n": ("\t", True),
        "y;x\n1;2\n0;3\n": (";", True),
        "1,2\n3,4\n": (",", False),
    }
    for text, (delimiter, header) in cases.items():
        path = tmp_path / "f.txt"
        path.write_text(text)
        found = sniff(str(path))
        assert (found["delimiter"], found["header"]) == (delimiter, header), text


def test_measures_keys_dates_and_ids_as_public_logs_name_them():
    """Columns as KuaiRec, RetailRocket, Amazon reviews and pandas write them: near-unique
    whole numbers are keys only when named or numbered like one (a duration is a number),
    entity names without a separator are ids, and times come as epochs, YYYYMMDD or text."""
    n = 2000
    rng = np.random.default_rng(0)
    days = rng.integers(1, 28, n)
    table = pa.table(
        {
            "click": rng.integers(0, 2, n),
            "Unnamed: 0": np.arange(n),  # pandas' index, written by to_csv
            "seq": np.arange(n) + 7,  # numbered rows
            "transactionid": rng.permutation(10**6)[:n],
            "play_duration": rng.permutation(10**6)[:n],  # milliseconds: a measure
            "visitorid": rng.integers(0, 900, n),
            "item": rng.integers(0, 900, n),
            "rating_count": rng.integers(0, 900, n),
            "date": 20200700 + days,  # KuaiRec's YYYYMMDD, few values
            "timestamp": 1_593_898_068.378 + np.arange(n) * 0.5,  # float epoch seconds
            "reviewTime": [
                f"{m:02d} {d}, 20{y}" for m, d, y in zip(days % 12 + 1, days, days % 9 + 10)
            ],
            "created": [f"2016-03-{d:02d} 08:00:00Z" for d in days],
            "day": rng.integers(0, 7, n),
        }
    )
    got = {c.column: (c.section, c.why) for c in infer_schema(table, ["click"])}
    for key in ("Unnamed: 0", "seq", "transactionid"):
        assert got[key] == ("skip", f"{n} values in {n} rows: a key"), key
    assert got["play_duration"][0] == "dense"
    assert got["visitorid"] == got["item"] == ("sparse", "named as ids")
    assert got["rating_count"][0] == "dense"
    assert got["date"] == (
        "skip",
        "named as a time (YYYYMMDD): for splitting (recis split --by time)",
    )
    assert got["timestamp"][1].startswith("named as a time (seconds since 1970)")
    assert got["reviewTime"][1].startswith("dates as text (")
    assert got["created"][0] == "skip"
    assert got["day"] == ("sparse", "7 whole values: categorical ids")


def test_numbers_written_as_text_become_dense_and_digit_ids_stay_hashed():
    n = 2000
    rng = np.random.default_rng(1)
    table = pa.table(
        {
            "click": rng.integers(0, 2, n),
            "price": [f"{x:.2f}" for x in rng.lognormal(3, 1, n)],  # a Hive STRING column
            "user_id": [str(x) for x in rng.integers(0, 500, n)],
            "vote": [str(x) if x else "" for x in rng.integers(0, 300, n)],
            "thousands": [f"{x:,}" for x in rng.integers(0, 10**6, n)],  # "1,234": not plain
        }
    )
    got = {c.column: c for c in infer_schema(table, ["click"])}
    assert got["price"].section == "dense" and got["price"].why.startswith("numbers as text: ")
    assert got["vote"].section == "dense"
    assert got["user_id"].section == "sparse" and got["user_id"].why.startswith("strings")
    assert got["thousands"].section != "dense"


def test_a_european_export_s_decimal_commas_are_read_as_numbers(tmp_path):
    """Excel's CSV in a European locale: ``;`` between fields, ``17,60`` numbers, a UTF-8
    byte order mark and CRLF line ends. Before, the prices were ids joined by ``,``."""
    rng = np.random.default_rng(2)
    lines = ["user_id;price;click"]
    prices = np.round(rng.lognormal(3, 1, 500), 2)
    for p in prices:
        lines.append(f"{rng.integers(0, 50)};{p:.2f};{rng.integers(0, 2)}".replace(".", ","))
    path = tmp_path / "export.csv"
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8-sig"))
    out = tmp_path / "e.yaml"
    assert main(["init", str(path), "--label", "click", "--out", str(out)]) == 0
    cfg = yaml.safe_load(out.read_text())
    assert cfg["data"]["csv"] == {"delimiter": ";", "decimal_point": ","}
    price = _entries(cfg, "dense")["price"]
    assert price["fill"] == pytest.approx(float(np.median(prices)), rel=1e-4)
    assert "user_id" in _entries(cfg, "sparse")


def test_without_eval_files_the_tail_of_the_training_rows_stops_training(tmp_path):
    """No ``--eval``: ``data.holdout: 0.1``; the last 10% of the rows in file order are the
    eval data and are never trained on, and early stopping watches them."""
    from recis.train.runner import build

    path = tmp_path / "log.parquet"
    table = _log(0).append_column("row", pa.array(np.arange(N, dtype=np.float64)))
    pq.write_table(table, path, row_group_size=700)  # the cut falls inside a row group
    out, run = tmp_path / "h.yaml", tmp_path / "run"
    args = ["init", str(path), "--label", "click", "--out", str(out), "--run-dir", str(run)]
    assert main([*args, "--ignore", "row"]) == 0
    raw = yaml.safe_load(out.read_text())
    assert raw["data"]["holdout"] == 0.1 and "eval" not in raw["data"]
    assert raw["train"]["schedule"]["total_steps"] == 10 * 6  # 2,700 rows / 512, 10 epochs
    raw["data"]["schema"]["extras"] = ["row"]
    out.write_text(yaml.safe_dump(raw))
    trainer, _ = build(load_config(out))
    assert trainer.train_data.num_rows == 2700 and trainer.eval_data.num_rows == 300
    held = torch.cat([b.extras["row"] for b in trainer.eval_data]).tolist()
    fit = torch.cat([b.extras["row"] for b in trainer.train_data]).tolist()
    assert held == list(range(2700, N)) and sorted(fit) == list(range(2700))
    assert main(["train", str(out), "--set", "threads=1", "--set", "train.epochs=3"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["click/auc"] > 0.65 and result["best_epoch"] >= 1
    with pytest.raises(ConfigError, match="data.eval or data.holdout, not both"):
        load_config(out, [f"data.eval={path}"])


def test_a_time_column_gives_the_hour_and_weekday_the_log_lacks(tmp_path):
    n = 2000
    rng = np.random.default_rng(3)
    ms = 1_433_221_332_117 + np.sort(rng.integers(0, 30 * 86_400_000, n))  # RetailRocket's
    table = pa.table(
        {"click": rng.integers(0, 2, n), "timestamp": ms, "itemid": rng.integers(0, 99, n)}
    )
    got = {c.spec.get("name", c.column): c for c in infer_schema(table, ["click"])}
    assert got["timestamp"].section == "skip"  # still not a feature itself
    hour, day = got["timestamp_hour"].spec, got["timestamp_weekday"].spec
    assert hour == {
        "name": "timestamp_hour",
        "column": "timestamp",
        "time": "hour",
        "time_unit": "ms",
    }
    assert day["time"] == "weekday" and got["timestamp_weekday"].table["capacity"] == 16
    # a log that holds the hour already gets only the weekday
    with_hour = table.append_column("hour", pa.array(rng.integers(0, 24, n)))
    names = {c.spec.get("name") for c in infer_schema(with_hour, ["click"])}
    assert "timestamp_weekday" in names and "timestamp_hour" not in names
