"""recis.io.lexical: match features against values computed by hand, scikit-learn, save/load."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from recis.errors import CheckpointError, ConfigError
from recis.io.lexical import FEATURES, LexicalConfig, LexicalMatcher

# train: queries "ab", "bc"; titles "abc", "cd" (char 1-2-grams)
TRAIN_Q, TRAIN_T = ["ab", "bc"], ["abc", "cd"]


def by_hand_first_pair() -> list[float]:
    """Features of ("ab", "abcx") with the statistics of TRAIN_Q / TRAIN_T, written out."""
    # TF-IDF documents: ab, bc, abc, cd (n = 4); df: a 2, b 3, c 3, ab 2, bc 2 ("x", "cx" unseen)
    idf = {t: math.log(5 / (1 + df)) + 1 for t, df in dict(a=2, b=3, c=3, ab=2, bc=2).items()}
    q = ["a", "b", "ab"]  # every tf is 1: weight = idf
    t = ["a", "b", "c", "ab", "bc"]
    dot = sum(idf[x] ** 2 for x in q)
    cosine = dot / math.sqrt(dot) / math.sqrt(sum(idf[x] ** 2 for x in t))
    # BM25: 2 titles, df(a) = df(b) = df(ab) = 1; title length 5 known terms, average (5 + 3) / 2
    idf_bm25 = math.log(1 + (2 - 1 + 0.5) / (1 + 0.5))
    bm25 = 3 * idf_bm25 * 1 * 2.2 / (1 + 1.2 * (1 - 0.75 + 0.75 * 5 / 4))
    return [cosine, bm25, 1.0, 1.0, 2 / 4, 1.0, 0.0, math.log(3), math.log(5)]


def test_features_match_hand_computed_values() -> None:
    m = LexicalMatcher.fit(TRAIN_Q, TRAIN_T)
    x = m.features(["ab", "Xd", "ＡＢ", "abc"], ["abcx", "c", "abcx", ""])
    assert x.shape == (4, len(FEATURES)) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], by_hand_first_pair(), rtol=1e-6)
    # "xd" vs "c": nothing shared ("d" known, "x" and "xd" unseen), lengths 2 and 1
    np.testing.assert_allclose(x[1], [0, 0, 0, 0, 0, 0, 0, math.log(3), math.log(2)], atol=1e-7)
    # full-width letters normalise (NFKC) and lower-case to "ab": the first pair again
    np.testing.assert_allclose(x[2], x[0], rtol=1e-6)
    # an empty title: no overlap, "" is inside any query
    np.testing.assert_allclose(x[3], [0, 0, 0, 0, 0, 0, 1, math.log(4), 0], atol=1e-7)


def test_repeated_terms_saturate() -> None:
    """tf 2 gives TF-IDF weight 1 + ln 2 and BM25 tf (k1 + 1) tf / (tf + k1 (...))."""
    m = LexicalMatcher.fit(["a"], ["ab"])  # docs a, ab: df a 2, b 1, ab 1; 1 title of 3 terms
    x = m.features(["a"], ["aa"])  # title terms a (tf 2), aa (unseen)
    assert x[0, 0] == pytest.approx(1.0)  # one shared term: cosine 1 whatever its weight
    idf = math.log(1 + (1 - 1 + 0.5) / (1 + 0.5))
    expected = idf * 2 * 2.2 / (2 + 1.2 * (1 - 0.75 + 0.75 * 2 / 3))
    assert x[0, 1] == pytest.approx(expected, rel=1e-6)
    y = m.features(["ab"], ["aab"])  # query a, b, ab; title a (2), b, aa, ab
    w = {"a": (1 + math.log(2)) * (math.log(3 / 3) + 1), "b": math.log(3 / 2) + 1}
    w["ab"] = w["b"]
    q2 = w["b"] ** 2 + w["ab"] ** 2 + (math.log(3 / 3) + 1) ** 2
    t2 = sum(v * v for v in w.values())
    dot = (math.log(3 / 3) + 1) * w["a"] + w["b"] ** 2 + w["ab"] ** 2
    assert y[0, 0] == pytest.approx(dot / math.sqrt(q2 * t2), rel=1e-6)


def test_matches_scikit_learn_on_chinese_text(tmp_path) -> None:
    sklearn = pytest.importorskip("sklearn.feature_extraction.text")
    rng = np.random.default_rng(0)
    chars = list("苹果手机价格华为小米电脑怎么下载官网")

    def texts(n: int, lo: int, hi: int) -> list[str]:
        return ["".join(rng.choice(chars, rng.integers(lo, hi))) for _ in range(n)]

    tq, tt, q, t = texts(200, 2, 6), texts(200, 5, 15), texts(50, 2, 6), texts(50, 5, 15)
    m = LexicalMatcher.fit(tq, tt)
    grams = dict(analyzer="char", ngram_range=(1, 2), lowercase=True)
    tfidf = sklearn.TfidfVectorizer(sublinear_tf=True, **grams).fit(tq + tt)
    cos = np.asarray(tfidf.transform(q).multiply(tfidf.transform(t)).sum(1)).ravel()
    counts = sklearn.CountVectorizer(**grams).fit(tq + tt)
    t_train = counts.transform(tt)
    df = np.bincount(t_train.indices, minlength=t_train.shape[1])
    idf = np.log(1 + (len(tt) - df + 0.5) / (df + 0.5))
    avgdl = t_train.sum() / len(tt)
    tm, qm = counts.transform(t).toarray().astype(float), counts.transform(q).toarray() > 0
    dl = tm.sum(1, keepdims=True)
    bm25 = (qm * idf * tm * 2.2 / (tm + 1.2 * (0.25 + 0.75 * dl / avgdl))).sum(1)
    x = m.features(q, t)
    np.testing.assert_allclose(x[:, 0], cos, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(x[:, 1], bm25, rtol=1e-5, atol=1e-5)
    share = [len(set(a) & set(b)) / len(set(a)) for a, b in zip(q, t)]
    np.testing.assert_allclose(x[:, 2], share, rtol=1e-6)

    path = LexicalMatcher.fit(tq, tt).save(tmp_path / "lexical.safetensors")
    np.testing.assert_array_equal(LexicalMatcher.load(path).features(q, t), x)


def test_bad_settings_and_files_are_named(tmp_path) -> None:
    with pytest.raises(ConfigError, match="ngram_range"):
        LexicalConfig(ngram_range=(2, 1))
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a file")
    with pytest.raises(CheckpointError, match="x.safetensors"):
        LexicalMatcher.load(bad)


def test_a_lexical_dense_feature_is_computed_by_the_reader_and_bundled_in_exports(
    tmp_path, capsys, monkeypatch
) -> None:
    """``DenseFeature(lexical=...)``: the reader computes the 9 columns of each (query, title)
    row with the fitted statistics, ``recis vocab build`` fits them on the train files only,
    an export carries the file, and a missing file or a number column is a one-line error."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from recis.cli import main
    from recis.errors import DataError
    from recis.export.manifest import bundle_tokenizers, manifest_schema
    from recis.features import DenseFeature, LabelSpec, Schema
    from recis.io import Reader

    queries = ["红色跑鞋", "phone case", None, "蓝色手机壳"]
    titles = ["男款红色跑鞋 特价", "blue silicone phone case", "wireless charger", None]
    pq.write_table(
        pa.table({"q": queries, "t": titles, "y": [1.0, 1.0, 0.0, 0.0], "n": [1, 2, 3, 4]}),
        tmp_path / "train.parquet",
    )
    pq.write_table(
        pa.table({"q": ["rain boots"], "t": ["rain boots sale"], "y": [1.0], "n": [5]}),
        tmp_path / "eval.parquet",
    )
    stats = tmp_path / "run" / "match.safetensors"
    field = "data.schema.dense.0.lexical.stats"
    feature = {"name": "match", "lexical": {"query": "q", "title": "t", "stats": str(stats)}}
    cfg = {
        "run_dir": str(tmp_path / "run"),
        "data": {
            "train": str(tmp_path / "train.parquet"),
            "eval": str(tmp_path / "eval.parquet"),
            "schema": {"dense": [feature], "labels": [{"name": "y"}]},
        },
        "model": {"name": "dlrm", "bottom_mlp": [8, 4], "top_mlp": [8], "tables": []},
    }
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["vocab", "build", str(config)]) == 0
    assert f"lexical statistics: 4 pairs -> {stats}" in capsys.readouterr().out
    # a file that cannot be written: one line naming the field, nothing left behind
    for where in ("/proc/match.safetensors", str(config / "match.safetensors")):
        assert main(["vocab", "build", str(config), "--set", f"{field}={where}"]) == 2
        err = capsys.readouterr().err
        named = "data.schema.dense.match.lexical.stats"
        assert err.startswith(f"recis: error: {named}: cannot write {where}: ")
        assert err.count("\n") == 1
    # fitted on the train pairs (nulls as ""), not the eval ones
    want = LexicalMatcher.fit([x or "" for x in queries], [x or "" for x in titles])
    assert LexicalMatcher.load(stats).terms.tolist() == want.terms.tolist()

    schema = Schema(dense=[DenseFeature(**feature)], labels=[LabelSpec(name="y")])
    assert schema.dense_dim == len(FEATURES) and schema.columns == ["q", "t", "y"]
    (b,) = list(Reader(tmp_path / "train.parquet", schema, 8))
    np.testing.assert_array_equal(b.dense.numpy(), want.features(queries, titles))
    # read again: the pairs come from the matcher's memory, in the batch's order; and with
    # a memory of 3 pairs, filled by the first batch of 2, it starts again
    from recis.io import lexical

    for memo, batch in ((1 << 17, 3), (3, 2)):
        monkeypatch.setattr(lexical, "_PAIR_MEMO", memo)
        again = np.concatenate(
            [x.dense.numpy() for x in Reader(tmp_path / "train.parquet", schema, batch)]
        )
        np.testing.assert_array_equal(again, b.dense.numpy())
    # a batch without rows: nine empty columns
    empty = lexical.lexical_columns(
        pa.table({"q": pa.array([], pa.string()), "t": pa.array([], pa.string())}), schema.dense[0]
    )
    assert empty.shape == (len(FEATURES), 0) and empty.dtype == np.float32
    assert b.dense[0, 0] > 0.5 and b.dense[2, 0] == 0  # a null query matches nothing

    # an export carries the statistics: its schema reads them from the version folder
    version = tmp_path / "export" / "v1"
    bundled = bundle_tokenizers(cfg["data"]["schema"], version)
    served = manifest_schema(version, {"schema": bundled})
    assert Path(served.dense[0].lexical.stats).read_bytes() == stats.read_bytes()
    assert str(version) in served.dense[0].lexical.stats

    stats.unlink()
    with pytest.raises(ConfigError, match=r"dense\.match\.lexical\.stats: .* does not exist; "):
        list(Reader(tmp_path / "train.parquet", schema, 8))
    numbers = DenseFeature(name="m2", lexical={"query": "n", "title": "t", "stats": str(stats)})
    bad = Schema(dense=[numbers], labels=[LabelSpec(name="y")])
    with pytest.raises(DataError, match=r"column 'n'.*text for the lexical feature m2"):
        list(Reader(tmp_path / "train.parquet", bad, 8))
