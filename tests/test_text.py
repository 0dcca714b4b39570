"""Raw text features: tokenizers (n-gram hashing, trained vocabulary, HF), the reader, DeepBoW."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recis.config import validate
from recis.errors import ConfigError, DataError
from recis.features import LabelSpec, Schema, TextFeature
from recis.io import Reader
from recis.io.tokenizers import ngram_terms, tokenizer_for
from recis.ops.hashing import hash_strings

ROOT = Path(__file__).resolve().parents[1]


def _feature(**tok) -> TextFeature:
    return TextFeature(name="q", tokenizer={"kind": "ngram", **tok}, max_length=16)


def test_word_ngrams_split_on_unicode_word_boundaries() -> None:
    assert ngram_terms("red running-shoes, 42!", 2, []) == [
        "red",
        "running",
        "red running",
        "shoes",
        "running shoes",
        "42",
        "shoes 42",
    ]
    assert ngram_terms("café au lait", 1, []) == ["café", "au", "lait"]


def test_chinese_char_ngrams_without_spaces() -> None:
    # each ideograph is a word; char bigrams stay inside a run of word characters
    assert ngram_terms("红色跑鞋", 0, [1, 2]) == ["红", "色", "红色", "跑", "色跑", "鞋", "跑鞋"]
    # a CJK word bigram is the same term as the char bigram (no space), and is emitted once
    assert ngram_terms("红色跑鞋", 2, [1, 2]) == ngram_terms("红色跑鞋", 0, [1, 2])
    assert ngram_terms("男款 跑鞋", 0, [2]) == ["男款", "跑鞋"]
    # mixed scripts: the Latin word stays whole, a bigram across scripts keeps a space
    assert ngram_terms("nike跑鞋", 2, []) == ["nike", "跑", "nike 跑", "鞋", "跑鞋"]


def test_english_char_ngrams_inside_words() -> None:
    assert ngram_terms("ab cd", 0, [1, 2]) == ["a", "b", "ab", "c", "d", "cd"]
    assert ngram_terms("abc", 1, [3]) == ["abc"]  # the char 3-gram equals the word: once
    # repeats in the text stay: a bag of words counts them
    assert ngram_terms("aaa", 1, [1, 3]) == ["aaa", "a", "a", "a"]
    assert ngram_terms("red red", 2, []) == ["red", "red", "red red"]


def test_normalization_and_lowercase() -> None:
    tok = tokenizer_for(_feature(words=1))
    # NFKC folds full-width letters and digits, then lowercasing
    assert tok.terms("ＲＥＤ Ｓｈｏｅ ４２") == ["red", "shoe", "42"]
    assert tok.terms("Café") == tok.terms("Cafe\u0301")  # composed == decomposed
    raw = tokenizer_for(_feature(words=1, normalize="none", lowercase=False))
    assert raw.terms("ＲＥＤ Shoe") == ["ＲＥＤ", "Shoe"]


def test_ngram_ids_are_salted_hashes_mod_buckets_and_padded() -> None:
    tok = tokenizer_for(_feature(words=2))
    ids, mask = tok.encode(["Red shoe", "", "a b c d e f"], max_length=4)
    expected = hash_strings(["red", "shoe", "red shoe"], salt="text")
    assert ids.dtype == np.int64 and ids.shape == (3, 4)
    assert ids[0, :3].tolist() == expected.tolist() and ids[0, 3] == 0
    assert mask.tolist() == [[1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]]
    # max_length keeps the first 4 terms; keep_last (truncate: last) the last ones
    assert ids[2].tolist() == [i for i, _ in tok.pieces("a b c d e f")[:4]]
    assert [p for _, p in tok.pieces("a b c d e f")[:4]] == ["a", "b", "a b", "c"]
    last, _ = tok.encode(["a b c d e"], max_length=2, keep_last=True)
    assert last[0].tolist() == hash_strings(["e", "d e"], salt="text").tolist()
    small = tokenizer_for(_feature(words=1, buckets=100))
    b, _ = small.encode(["red shoe"], 2)
    assert b[0].tolist() == (expected[:2] % 100).tolist() and (b >= 0).all()


def test_ngram_config_errors() -> None:
    def schema(tok: dict) -> Schema:
        return validate(Schema, {"text": [{"name": "q", "tokenizer": tok}]}, "data.schema")

    with pytest.raises(ConfigError, match=r"data\.schema\.text\.0\.tokenizer.*chars"):
        schema({"kind": "ngram", "chars": [0]})
    with pytest.raises(ConfigError, match="no terms"):
        schema({"kind": "ngram", "words": 0})
    with pytest.raises(ConfigError, match="tokenizer"):
        schema({"kind": "wordlist"})
    assert schema({"kind": "vocab", "path": "t.json"}).text[0].tokenizer.model == "bpe"
    # the old string form is an HF tokenizer directory
    assert TextFeature(name="q", tokenizer="/some/dir").tokenizer.kind == "hf"
    assert TextFeature(name="q").max_length == 128


_IDS_SCRIPT = """
import json, sys
from recis.features import TextFeature
from recis.io.tokenizers import tokenizer_for
f = TextFeature(name="q", tokenizer={"kind": "ngram", "words": 2, "chars": [1, 2]})
ids, _ = tokenizer_for(f).encode(["Red shoes 红色跑鞋", "über café"], 32)
print(json.dumps(ids.tolist()))
"""


def test_ngram_ids_identical_in_two_processes() -> None:
    # the child's str hash seed differs from this process's (random unless set): ids that
    # depended on Python's hash() would differ
    seed = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"
    env = {"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"}
    res = subprocess.run(
        [sys.executable, "-c", _IDS_SCRIPT], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert res.returncode == 0, res.stderr
    there = json.loads(res.stdout.strip().splitlines()[-1])
    f = TextFeature(name="q", tokenizer={"kind": "ngram", "words": 2, "chars": [1, 2]})
    texts = ["Red shoes 红色跑鞋", "über café"]
    here, mask = tokenizer_for(f).encode(texts, 32)
    assert here.tolist() == there
    distinct = {t for x in texts for t in tokenizer_for(f).terms(x)}
    assert len(set(here[mask == 1].tolist())) == len(distinct)  # one id per distinct term


def test_reader_tokenizes_a_raw_text_column(tmp_path) -> None:
    pq.write_table(
        pa.table({"q": ["Red Shoe", None, "红色跑鞋"], "y": [1.0, 0.0, 1.0]}),
        tmp_path / "t.parquet",
    )
    feat = TextFeature(
        name="q", tokenizer={"kind": "ngram", "words": 1, "chars": [2]}, max_length=5
    )
    schema = Schema(text=[feat], labels=[LabelSpec(name="y")])
    (b,) = list(Reader(tmp_path / "t.parquet", schema, 8))
    assert b.text["q"].shape == (3, 5) and b.text["q"].dtype == torch.int64
    pieces = tokenizer_for(feat).pieces("红色跑鞋")
    assert [p for _, p in pieces] == ["红", "色", "红色", "跑", "色跑", "鞋", "跑鞋"]
    assert b.text["q"][2].tolist() == [i for i, _ in pieces[:5]]
    assert b.text["q_mask"].tolist()[1] == [0] * 5
    terms = ["red", "re", "ed", "shoe", "sh"]
    assert b.text["q"][0].tolist() == hash_strings(terms, salt="text").tolist()


TITLES = [
    "red running shoes for men",
    "blue silicone phone case",
    "wireless phone charger fast",
    "leather running shoes sale",
    "男款红色跑鞋 特价",
    "蓝色手机壳 硅胶",
]
QUERIES = ["running shoes", "phone case", "phone charger", "red shoes", "红色跑鞋", "手机壳"]


def _write_pairs(path: Path, queries: list[str], titles: list[str], seed: int) -> None:
    rng = np.random.default_rng(seed)
    q, t, y = [], [], []
    for _ in range(8):
        for i, query in enumerate(queries):
            j = i if rng.random() < 0.5 else int(rng.integers(len(titles)))
            q.append(query)
            t.append(titles[j])
            y.append(float(i == j))
    pq.write_table(pa.table({"query": q, "title": t, "label": y}), path)


def _config(tmp_path: Path, tokenizer: dict) -> Path:
    import yaml

    cfg = {
        "run_dir": str(tmp_path / "run"),
        "threads": 1,
        "data": {
            "train": str(tmp_path / "train"),
            "eval": str(tmp_path / "eval"),
            "batch_size": 16,
            "schema": {
                "text": [
                    {"name": "query", "tokenizer": tokenizer, "max_length": 16},
                    {"name": "title", "tokenizer": tokenizer, "max_length": 16},
                ],
                "labels": [{"name": "relevant", "column": "label"}],
            },
        },
        "model": {
            "name": "deepbow",
            "query_text": "query",
            "product_text": "title",
            "product_id": None,
            "max_len": 16,
            "vocab": 512,
            "dim": 16,
        },
        "train": {"epochs": 1, "progress": False, "dense_optimizer": {"name": "adam", "lr": 0.01}},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("model", ["bpe", "wordpiece"])
def test_vocab_built_from_train_files_reloads_with_the_same_ids(tmp_path, model) -> None:
    from recis.cli import main
    from recis.config import load_config
    from recis.io.tokenizers import SubwordVocab

    (tmp_path / "train").mkdir()
    (tmp_path / "eval").mkdir()
    _write_pairs(tmp_path / "train" / "a.parquet", QUERIES, TITLES, 0)
    # a word only in the eval file must not enter the vocabulary
    _write_pairs(tmp_path / "eval" / "a.parquet", ["zebra quokka"], ["zebra quokka"], 1)
    vocab = tmp_path / "run" / "tokenizer.json"
    tok = {"kind": "vocab", "path": str(vocab), "model": model, "vocab_size": 120}
    config = _config(tmp_path, tok)
    assert main(["vocab", "build", str(config)]) == 0
    assert vocab.is_file()
    cfg = load_config(config)
    spec = cfg.data.schema_.text[0].tokenizer
    first = SubwordVocab(spec)
    pieces = dict((p, i) for i, p in first.pieces("Running Shoes"))
    assert {"running", "shoes"} <= pieces.keys()  # frequent train words are whole pieces
    zebra = [p for _, p in first.pieces("zebra")]
    assert zebra and "zebra" not in zebra and "[UNK]" in zebra  # z is in no train text
    assert first.encode(["running shoes"], 4)[0][0].tolist() == [
        pieces["running"],
        pieces["shoes"],
        0,
        0,
    ]
    texts = TITLES + QUERIES + ["zebra", ""]
    ids, mask = first.encode(texts, 16)
    # a reload gives the same ids
    again = SubwordVocab(spec)
    ids2, mask2 = again.encode(texts, 16)
    assert np.array_equal(ids, ids2) and np.array_equal(mask, mask2)
    assert (ids[mask == 1] >= 1).all() and (ids[mask == 1] < 120).all()
    if model == "bpe":  # BPE training is deterministic: a rebuild writes the same file
        before = vocab.read_bytes()
        assert main(["vocab", "build", str(config)]) == 0
        assert vocab.read_bytes() == before


def test_train_from_raw_text_builds_the_missing_vocabulary(tmp_path, capsys) -> None:
    from recis.cli import main

    (tmp_path / "train").mkdir()
    (tmp_path / "eval").mkdir()
    _write_pairs(tmp_path / "train" / "a.parquet", QUERIES, TITLES, 0)
    _write_pairs(tmp_path / "eval" / "a.parquet", QUERIES, TITLES, 1)
    vocab = tmp_path / "run" / "tokenizer.json"
    config = _config(tmp_path, {"kind": "vocab", "path": str(vocab), "vocab_size": 100})
    assert main(["train", str(config), "--set", "train.max_steps=3"]) == 0
    out = capsys.readouterr().out
    assert f"-> {vocab}" in out and vocab.is_file()
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["relevant/auc"] is not None


def test_missing_vocabulary_names_the_command(tmp_path) -> None:
    f = TextFeature(name="q", tokenizer={"kind": "vocab", "path": str(tmp_path / "no.json")})
    with pytest.raises(ConfigError, match="recis vocab build"):
        tokenizer_for(f)


def _hf_tokenizer_dir(path: Path) -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[CLS]"])
    tok.train_from_iterator(QUERIES + TITLES, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]"
    )
    fast.save_pretrained(path)
    return str(path)


TINY_BERT = {
    "model_type": "bert",
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "vocab_size": 64,
    "max_position_embeddings": 32,
}


@pytest.mark.parametrize("tower", ["ngram_bag", "hf_llm"])
def test_text_features_feed_the_two_tower_text_towers(tmp_path, tower) -> None:
    from recis.models import TwoTower, TwoTowerConfig

    rows = {"query": QUERIES * 4, "title": TITLES * 4, "item_id": list(range(6)) * 4}
    rows["label"] = [1.0] * 24
    pq.write_table(pa.table(rows), tmp_path / "t.parquet")
    if tower == "hf_llm":
        tokenizer: object = _hf_tokenizer_dir(tmp_path / "tok")
        llm = {"config": TINY_BERT}
    else:
        tokenizer, llm = {"kind": "ngram", "words": 2, "chars": [1, 2]}, None
    schema = validate(
        Schema,
        {
            "sparse": [{"name": "item_id"}],
            "text": [
                {"name": "query", "tokenizer": tokenizer, "max_length": 12},
                {"name": "title", "tokenizer": tokenizer, "max_length": 12},
            ],
            "labels": [{"name": "click", "column": "label"}],
        },
        "data.schema",
    )
    cfg = validate(
        TwoTowerConfig,
        {
            "query": {"text": "query", "max_len": 12, "mlp": [16]},
            "item": {"sparse": ["item_id"], "text": "title", "max_len": 12, "mlp": [16]},
            "dim": 8,
            "llm": llm,
            "text_vocab": 1024,
            "text_dim": 8,
            "tables": [{"name": "item_id", "dim": 8, "capacity": 16}],
        },
        "model",
    )
    torch.manual_seed(0)
    model = TwoTower(cfg, schema, torch.device("cpu"))
    (batch,) = list(Reader(tmp_path / "t.parquet", schema, 24, shuffle=False))
    if tower == "hf_llm":  # real vocabulary ids, not hashes
        assert 0 < int(batch.text["query"].max()) < 64
    text_params = list(model.text.parameters())
    before = [p.detach().clone() for p in text_params]
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    for _ in range(3):
        model.train()
        loss = model.loss(model(batch), batch)["click"]
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, text_params))  # text tower trained
    model.eval()
    with torch.no_grad():
        u = model.encode_queries(batch)
    assert u.shape == (24, 8) and torch.isfinite(u).all()
    # equal query texts get equal embeddings: the text alone encodes the query side
    torch.testing.assert_close(u[:6], u[6:12])


def test_dense_relevance_and_llm_deepbow_read_raw_text(tmp_path) -> None:
    from recis.models import DeepBoW, DeepBoWConfig, DenseRelevance
    from recis.models.text_towers import text_input

    (tmp_path / "train").mkdir()
    _write_pairs(tmp_path / "train" / "a.parquet", QUERIES, TITLES, 0)
    hf = _hf_tokenizer_dir(tmp_path / "tok")
    for model_cls, tokenizer, llm in [
        (DenseRelevance, {"kind": "ngram", "chars": [2]}, None),
        (DeepBoW, hf, {"config": TINY_BERT}),
    ]:
        schema = validate(
            Schema,
            {
                "text": [
                    {"name": "query", "tokenizer": tokenizer, "max_length": 16},
                    {"name": "title", "tokenizer": tokenizer, "max_length": 16},
                ],
                "labels": [{"name": "relevant", "column": "label"}],
            },
            "data.schema",
        )
        cfg = DeepBoWConfig(
            query_text="query", product_text="title", vocab=64, dim=16, max_len=16, llm=llm
        )
        torch.manual_seed(0)
        model = model_cls(cfg, schema, torch.device("cpu"))
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        losses = []
        for _ in range(4):
            for batch in Reader(tmp_path / "train", schema, 48, shuffle=False):
                model.train()
                out = model(batch)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    out["relevant"], batch.labels["relevant"]
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
        assert np.isfinite(losses).all() and losses[-1] < losses[0], (model_cls, losses)
    # the LLM DeepBoW explains with the HF tokenizer's pieces (words of the vocabulary)
    rows = model.explain("running shoes", "red running shoes for men")
    named = {r["term"] for r in rows if r["in_query"] or r["in_product"]}
    assert named and named <= {"running", "shoes", "red", "for", "men", "[CLS]"}
    # the pieces are the reader's tokens: the contributions add up to the model's score
    pq.write_table(
        pa.table({"query": ["running shoes"], "title": ["red running shoes for men"]}),
        tmp_path / "one.parquet",
    )
    (b,) = list(Reader(tmp_path / "one.parquet", Schema(text=schema.text), 1))
    model.eval()
    with torch.no_grad():
        q = model.dense_bag(*text_input(b, "query", 16))
        p = model.dense_bag(*text_input(b, "title", 16))
    assert sum(r["contribution"] for r in rows) == pytest.approx((q * p).sum().item(), rel=1e-4)


def test_list_of_strings_layout_reads_as_text(tmp_path) -> None:
    # RecIS / TorchEasyRec store every column as a list: one string, or several words
    col = pa.array([["Red Shoe"], ["red", "shoe"], [], None], pa.list_(pa.string()))
    pq.write_table(pa.table({"q": col, "y": [1.0, 0.0, 1.0, 0.0]}), tmp_path / "t.parquet")
    schema = Schema(text=[TextFeature(name="q", max_length=4)], labels=[LabelSpec(name="y")])
    (b,) = list(Reader(tmp_path / "t.parquet", schema, 8))
    red_shoe = hash_strings(["red", "shoe", "red shoe"], salt="text").tolist()
    assert b.text["q"][0].tolist() == b.text["q"][1].tolist() == red_shoe + [0]
    assert b.text["q_mask"][2:].sum() == 0  # empty and null lists: no tokens
    pq.write_table(pa.table({"q": pa.array([[1, 2]]), "y": [1.0]}), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="list<string>"):
        list(Reader(tmp_path / "bad.parquet", schema, 8))


def test_text_input_cuts_unused_padding_and_empty_texts_stay_finite() -> None:
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from recis.io.batch import Batch
    from recis.models import DeepBoW, DeepBoWConfig
    from recis.models.text_towers import text_input

    tok = tokenizer_for(TextFeature(name="q"))
    ids, mask = tok.encode(["red shoe", "", "lamp"], 8)  # 3, 0 and 1 terms
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["p"], values=torch.tensor([5, 6, 7]), lengths=torch.tensor([1, 0, 2])
    )
    text = {"q": torch.from_numpy(ids), "q_mask": torch.from_numpy(mask)}
    batch = Batch(sparse=kjt, dense=torch.zeros(3, 0), labels={}, text=text)
    got, m = text_input(batch, "q", 16)
    assert got.shape == (3, 3) and m.dtype == torch.bool  # the longest row has 3 tokens
    assert torch.equal(got, torch.from_numpy(ids[:, :3])) and m.sum(1).tolist() == [3, 0, 1]
    assert text_input(batch, "q", 2)[0].shape == (3, 2)  # the model's max_len cuts too
    assert text_input(batch, "p", 4)[0].tolist() == [[5, 0, 0, 0], [0] * 4, [6, 7, 0, 0]]
    schema = Schema(text=[TextFeature(name="q")])
    for k in (16, 0):  # with and without expansion terms
        cfg = DeepBoWConfig(query_text="q", product_text="q", vocab=64, dim=8, expansion_k=k)
        model = DeepBoW(cfg, schema, "cpu").eval()
        with torch.no_grad():  # an empty text (null title) masks every position: no NaN
            bag = model.dense_bag(got, m)
        assert torch.isfinite(bag).all()
    assert bag[1].abs().sum() == 0 and bag[0].abs().sum() > 0  # no text, no terms


QBQTC = ROOT.parent / "shared" / "data" / "qbqtc" / "pairs.parquet"


@pytest.mark.parametrize("words, chars", [(0, [1, 2]), (2, []), (2, [1, 2]), (1, [2, 3]), (3, [1])])
def test_cjk_shortcut_gives_the_word_by_word_terms(words, chars) -> None:
    rng = np.random.default_rng(0)
    alphabet = list("红色跑鞋男款手机壳 ab,x1é-")
    texts = ["".join(rng.choice(alphabet, size=int(rng.integers(0, 24)))) for _ in range(400)]
    if QBQTC.is_file():  # real Chinese web titles, mixed with Latin words and digits
        texts += pq.read_table(QBQTC, columns=["title"]).column("title").to_pylist()[:2000]
    for text in texts:
        assert ngram_terms(text, words, chars) == ngram_terms(text, words, chars, fast=False)


def test_vocab_build_without_vocab_features_is_one_line_error(tmp_path, capsys) -> None:
    from recis.cli import main

    config = _config(tmp_path, {"kind": "ngram"})
    assert main(["vocab", "build", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    want = "no text feature has a tokenizer of kind vocab and no dense feature is lexical"
    assert err == f"recis: error: data.schema: {want}"


def test_vocab_texts_name_csv_columns_as_the_reader_does(tmp_path) -> None:
    from recis.io import CsvOptions
    from recis.io.sources import Source
    from recis.io.vocab import read_texts

    headerless = tmp_path / "a.csv"
    headerless.write_text("1,red shoes\n0,blue hat\n")
    named = CsvOptions(header=False, column_names=["y", "q"])
    assert list(read_texts(headerless, ["q"], "csv", named)) == ["red shoes", "blue hat"]
    # header: true with names: the names replace the header line, which is not text
    headed = tmp_path / "b.csv"
    headed.write_text("label,query\n1,red shoes\n")
    renamed = CsvOptions(header=True, column_names=["y", "q"])
    assert list(read_texts(headed, ["q"], "csv", renamed)) == ["red shoes"]
    # no header, no names: Arrow's f0, f1 as in the reader
    unnamed = CsvOptions(header=False)
    assert list(read_texts(headerless, ["f1"], "csv", unnamed)) == ["red shoes", "blue hat"]
    for path, opts in ((headerless, named), (headed, renamed), (headerless, unnamed)):
        src = Source([str(path)], [], "csv", csv=opts)
        assert src.schema(0).names == (["f0", "f1"] if opts is unnamed else ["y", "q"])
