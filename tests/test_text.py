"""Raw text features: tokenizers (n-gram hashing, trained vocabulary, HF), the reader, DeepBoW."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recis.config import validate
from recis.errors import ConfigError
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
    assert TextFeature(name="q").max_length == 64


_IDS_SCRIPT = """
import json, sys
from recis.features import TextFeature
from recis.io.tokenizers import tokenizer_for
f = TextFeature(name="q", tokenizer={"kind": "ngram", "words": 2, "chars": [1, 2]})
ids, _ = tokenizer_for(f).encode(["Red shoes 红色跑鞋", "über café"], 32)
print(json.dumps(ids.tolist()))
"""


def test_ngram_ids_identical_in_two_processes() -> None:
    outs = []
    for seed in ("1", "2"):  # different hash() seeds: the ids must not depend on them
        env = {"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"}
        res = subprocess.run(
            [sys.executable, "-c", _IDS_SCRIPT], capture_output=True, text=True, env=env, cwd=ROOT
        )
        assert res.returncode == 0, res.stderr
        outs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    assert outs[0] == outs[1]
    f = TextFeature(name="q", tokenizer={"kind": "ngram", "words": 2, "chars": [1, 2]})
    here, _ = tokenizer_for(f).encode(["Red shoes 红色跑鞋", "über café"], 32)
    assert here.tolist() == outs[0]


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
