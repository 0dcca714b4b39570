"""Text -> token ids for :class:`~recis.features.TextFeature`: three tokenizers, one interface.

* :class:`NgramHasher` - word and char n-grams hashed to 64-bit ids, no vocabulary;
* :class:`SubwordVocab` - a BPE / WordPiece ``tokenizer.json`` trained on the train files
  (:func:`recis.io.vocab.build_vocabularies`, ``recis vocab build``);
* :class:`HFTextTokenizer` - a transformers tokenizer from a local directory.

Each maps ``B`` texts to ids ``[B, T]`` int64 (0-padded) and a mask ``[B, T]`` int64
(``T = max_length``), and :meth:`~TextTokenizer.pieces` gives one text's ``(id, piece)``
pairs (the n-gram or subword string of each id) for explanations.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recis.errors import ConfigError, DataError
from recis.features import (
    HFTokenizer,
    NgramTokenizer,
    Normalization,
    TextFeature,
    VocabTokenizer,
)
from recis.ops.hashing import hash_strings

# scripts written without spaces: each character is a word (CJK ideographs with extension A
# and compatibility ideographs, hiragana, katakana, CJK ideographs beyond the BMP)
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
_RUN = re.compile(r"\w+")
_IS_CJK = re.compile(rf"[{_CJK}]")
_PIECE = re.compile(rf"[{_CJK}]+|[^\W{_CJK}]+")  # a stretch of CJK chars, or one other word
_TERM_MEMO = 1 << 21  # distinct terms an NgramHasher remembers the id of
_TEXT_MEMO = 1 << 18  # texts whose ids it remembers

Encoded = tuple[np.ndarray, np.ndarray]  # ids [B, T] int64 (0-padded), mask [B, T] int64
# the salt of :func:`hashed_ngrams`: one for queries and products, so equal terms get equal ids
TEXT_SALT = "text"


class TextTokenizer(Protocol):
    """What the reader and the models need from a tokenizer."""

    def encode(self, texts: Sequence[str], max_length: int, keep_last: bool = False) -> Encoded:
        """``B`` texts -> ids ``[B, max_length]`` int64 (0-padded), mask ``[B, max_length]``."""
        ...

    def pieces(self, text: str) -> list[tuple[int, str]]:
        """One text's ``(id, piece)`` pairs in order, untruncated."""
        ...


def has_cjk(text: str) -> bool:
    """Whether ``text`` has a character of a script written without spaces (CJK, kana)."""
    return _IS_CJK.search(text) is not None


def normalize(text: str, form: Normalization, lowercase: bool) -> str:
    """Unicode normalization (``form``: NFKC/NFC/NFKD/NFD or ``none``), then lowercase."""
    if form != "none":
        text = unicodedata.normalize(form, text)
    return text.lower() if lowercase else text


def _word_terms(
    run: str, start: int, seq: list[str], cjk: list[bool], words: int, chars: Sequence[int]
) -> list[str]:
    """The terms at the last word of ``seq``, ``run[start:start + len(word)]``."""
    word = seq[-1]
    end = start + len(word)
    here: list[str] = [word] if words >= 1 else []
    gram = word
    for n in range(2, min(words, len(seq)) + 1):  # grows the gram leftwards
        prev = seq[-n]
        gram = prev + gram if cjk[-n] and cjk[-n + 1] else f"{prev} {gram}"
        here.append(gram)
    for n in chars:
        # the char n-gram that is the whole word: already there as the word
        last = end - 1 if words >= 1 and n == len(word) else end
        if n == 1:
            here.extend(run[start:last])
        else:
            here.extend(run[e - n : e] for e in range(max(start + 1, n), last + 1))
    # a CJK word's n-grams are its char n-grams: one of each
    return list(dict.fromkeys(here)) if cjk[-1] and len(here) > 1 else here


def _words_of(
    run: str, seq: list[str], cjk: list[bool], words: int, chars: Sequence[int], fast: bool = True
) -> list[str]:
    """The terms of the words of ``run``, in order (``seq``/``cjk`` grow with them).

    ``fast``: inside a stretch of CJK chars (most Chinese text), a char whose word n-grams
    all lie in the stretch takes its terms as slices ``run[e - n:e]``, one per order, the
    whole stretch in one comprehension: the same terms as :func:`_word_terms` word by word.
    """
    orders = list(dict.fromkeys([*range(1, words + 1), *chars]))
    out: list[str] = []
    for m in _PIECE.finditer(run):
        piece, start = m.group(), m.start()
        if not _IS_CJK.match(piece):  # one non-CJK word
            seq.append(piece)
            cjk.append(False)
            out += _word_terms(run, start, seq, cjk, words, chars)
            continue
        # the first words - 1 chars: their word n-grams reach back before the stretch
        k = len(piece) if not fast else min(max(words - 1, 0), len(piece))
        for i in range(start, start + k):
            seq.append(run[i])
            cjk.append(True)
            out += _word_terms(run, i, seq, cjk, words, chars)
        end = m.end()
        out += [run[e - n : e] for e in range(start + k + 1, end + 1) for n in orders if n <= e]
        seq += run[start + k : end]
        cjk += [True] * (end - start - k)
    return out


def ngram_terms(text: str, words: int, chars: Sequence[int], fast: bool = True) -> list[str]:
    """The terms of one (already normalized) text, in text order.

    At each word: the word (``words >= 1``), the word 2..``words``-grams ending there, then
    the char n-grams (orders ``chars``) ending inside it. Words of a space-less script join
    without a space, so a CJK word n-gram is the same term as the char n-gram; a term two
    generators make at one word (a CJK char as word and char 1-gram, a word that is also
    one of its char n-grams) comes once, repeats in the text stay (counts matter).
    ``fast=False`` builds every word's terms one by one (the reference for the shortcut).
    """
    out: list[str] = []
    seq: list[str] = []  # the words so far
    cjk: list[bool] = []  # per word: a single CJK character
    for run in _RUN.findall(text):
        out += _words_of(run, seq, cjk, words, chars, fast)
    return out


def ngrams(text: str, n: int = 2) -> list[str]:
    """Word 1..n-grams of a whitespace-tokenized, lower-cased text (bigrams as ``"a_b"``)."""
    words = text.lower().split()
    out = list(words)
    for k in range(2, n + 1):
        out += ["_".join(words[i : i + k]) for i in range(len(words) - k + 1)]
    return out


def hashed_ngrams(texts: list[str], n: int = 2, salt: str = TEXT_SALT) -> list[np.ndarray]:
    """Per text, the int64 ids of its 1..n-grams (:func:`ngrams`), hashed with one salt."""
    grams = [ngrams(t, n) for t in texts]
    flat = [g for gs in grams for g in gs]
    ids = hash_strings(flat, salt) if flat else np.zeros(0, np.int64)
    bounds = np.cumsum([0] + [len(g) for g in grams])
    return [ids[bounds[i] : bounds[i + 1]] for i in range(len(texts))]


def _pad(rows: list[np.ndarray], max_length: int, keep_last: bool) -> Encoded:
    """Per-row id arrays -> ids ``[B, max_length]`` int64 and mask ``[B, max_length]`` int64."""
    ids = np.zeros((len(rows), max_length), np.int64)
    mask = np.zeros((len(rows), max_length), np.int64)
    for i, row in enumerate(rows):
        row = row[-max_length:] if keep_last else row[:max_length]
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask


class NgramHasher:
    """Word/char n-gram hashing (see :class:`~recis.features.NgramTokenizer`).

    Ids are FNV-1a/splitmix64 hashes of the UTF-8 terms (``recis.ops.hashing``): the same
    on every machine, process and run; non-negative ``id mod buckets`` when ``buckets`` is set.
    """

    def __init__(self, spec: NgramTokenizer) -> None:
        self.spec = spec
        # term -> id memo: a corpus has far fewer distinct terms than term occurrences, so
        # most terms skip the hash; replaced (not cleared: another thread may be reading it)
        # when full
        self._memo: dict[str, int] = {}
        self._text_ids: dict[str, np.ndarray] = {}  # text -> all its ids: texts repeat by epoch

    def terms(self, text: str) -> list[str]:
        s = self.spec
        return ngram_terms(normalize(text, s.normalize, s.lowercase), s.words, s.chars)

    def ids(self, terms: Sequence[str]) -> np.ndarray:
        """int64 ids of terms ``[N]``."""
        memo = self._memo
        new = [t for t in dict.fromkeys(terms) if t not in memo]
        local: dict[str, int] = {}
        if new:
            h = hash_strings(new, salt=self.spec.salt)
            local = dict(zip(new, (h % self.spec.buckets if self.spec.buckets else h).tolist()))
            if len(memo) + len(local) <= _TERM_MEMO:
                memo.update(local)
            else:
                self._memo = dict(local)
        ids = [local[t] if t in local else memo[t] for t in terms]
        return np.array(ids, dtype=np.int64) if ids else np.zeros(0, np.int64)

    def encode(self, texts: Sequence[str], max_length: int, keep_last: bool = False) -> Encoded:
        return _pad(self.ragged(texts), max_length, keep_last)

    def ragged(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Each text's term ids ``[n_i]`` int64, untruncated."""
        memo = self._text_ids
        rows: list[np.ndarray | None] = [memo.get(t) for t in texts]
        todo = [i for i, r in enumerate(rows) if r is None]
        if todo:
            per_text = [self.terms(texts[i]) for i in todo]
            flat = self.ids([t for terms in per_text for t in terms])  # one hash call
            bounds = np.cumsum([0] + [len(t) for t in per_text])
            if len(memo) + len(todo) > _TEXT_MEMO:
                memo = self._text_ids = {}
            for k, i in enumerate(todo):
                rows[i] = memo[texts[i]] = flat[bounds[k] : bounds[k + 1]]
        done = [r for r in rows if r is not None]
        assert len(done) == len(rows)  # every row was memoized or hashed above
        return done

    def pieces(self, text: str) -> list[tuple[int, str]]:
        terms = self.terms(text)
        return list(zip(self.ids(terms).tolist(), terms))


class SubwordVocab:
    """A trained HF ``tokenizers`` vocabulary (``tokenizer.json``); ``[PAD]`` is id 0."""

    def __init__(self, spec: VocabTokenizer) -> None:
        from tokenizers import Tokenizer

        self.spec = spec
        if not Path(spec.path).is_file():
            raise ConfigError(
                f"tokenizer.path: {spec.path!r} does not exist; build it with "
                "`recis vocab build CONFIG`"
            )
        try:
            self.tokenizer = Tokenizer.from_file(spec.path)
        except Exception as err:  # tokenizers raises a bare Exception on a bad file
            raise DataError(f"cannot load tokenizer: {err}", path=spec.path) from None

    def _prepare(self, texts: Sequence[str]) -> list[str]:
        # normalization and lowercasing are also inside tokenizer.json (recis.io.vocab);
        # doing them here too keeps the spec's options meaningful for a file built elsewhere
        return [normalize(t, self.spec.normalize, self.spec.lowercase) for t in texts]

    def encode(self, texts: Sequence[str], max_length: int, keep_last: bool = False) -> Encoded:
        encs = self.tokenizer.encode_batch(self._prepare(texts), add_special_tokens=False)
        return _pad([np.asarray(e.ids, np.int64) for e in encs], max_length, keep_last)

    def pieces(self, text: str) -> list[tuple[int, str]]:
        enc = self.tokenizer.encode(self._prepare([text])[0], add_special_tokens=False)
        return list(zip(enc.ids, enc.tokens))


class HFTextTokenizer:
    """A transformers tokenizer from a local directory (special tokens added as it does)."""

    def __init__(self, spec: HFTokenizer) -> None:
        self.spec = spec
        self.tokenizer = load_tokenizer(spec.path)

    def encode(self, texts: Sequence[str], max_length: int, keep_last: bool = False) -> Encoded:
        tok = self.tokenizer
        tok.truncation_side = "left" if keep_last else "right"
        enc = tok(
            [normalize(t, self.spec.normalize, self.spec.lowercase) for t in texts],
            max_length=max_length,
            truncation=True,
            padding="max_length",
            return_tensors="np",
        )
        return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)

    def pieces(self, text: str) -> list[tuple[int, str]]:
        # special tokens included, as encode() adds them: the model sees them too
        text = normalize(text, self.spec.normalize, self.spec.lowercase)
        ids = self.tokenizer(text)["input_ids"]
        return list(zip(ids, self.tokenizer.convert_ids_to_tokens(ids)))


@lru_cache(maxsize=8)
def load_tokenizer(path: str):  # noqa: ANN201 - a transformers tokenizer
    """A transformers tokenizer from a local directory (cached: one load per process and path)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot load tokenizer: {str(err).splitlines()[0]}", path=path) from None


_TOKENIZERS: dict[str, TextTokenizer] = {}


def _build(spec: NgramTokenizer | VocabTokenizer | HFTokenizer) -> TextTokenizer:
    if isinstance(spec, NgramTokenizer):
        return NgramHasher(spec)
    if isinstance(spec, VocabTokenizer):
        return SubwordVocab(spec)
    return HFTextTokenizer(spec)


def tokenizer_for(feature: TextFeature) -> TextTokenizer:
    """The tokenizer of a text feature (one per process and distinct spec)."""
    return _cached(feature.tokenizer)


def text_column(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A text column as one ``string`` array, nulls kept: a dictionary decoded, a
    ``list<string>`` row (the RecIS / TorchEasyRec layouts) its strings joined by spaces."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = pc.binary_join(arr.cast(pa.list_(pa.string())), " ")  # list<string> (checked)
    return arr.cast(pa.string())


def term_ids(col: pa.Array | pa.ChunkedArray, spec: NgramTokenizer) -> pa.ListArray:
    """``list<int64>``: each text's term ids in order (a tokenized
    :class:`~recis.features.SparseFeature`); a ``list<string>`` row is its strings joined by
    spaces, a null text is a null list (no id)."""
    arr = text_column(col)
    hasher = _cached(spec)
    assert isinstance(hasher, NgramHasher)
    rows = hasher.ragged(pc.fill_null(arr, "").to_pylist())
    lengths = np.fromiter((len(r) for r in rows), np.int64, len(rows))
    offsets = pa.array(np.concatenate(([0], np.cumsum(lengths))).astype(np.int32))
    values = pa.array(np.concatenate(rows) if rows else np.zeros(0, np.int64), pa.int64())
    return pa.ListArray.from_arrays(offsets, values, mask=arr.is_null())


def _cached(spec: NgramTokenizer | VocabTokenizer | HFTokenizer) -> TextTokenizer:
    # pydantic dataclasses are not hashable: the spec's repr is its cache key; a vocabulary
    # file rebuilt in place is picked up through its modification time
    key = repr(spec)
    if isinstance(spec, VocabTokenizer) and Path(spec.path).is_file():
        key += f"@{Path(spec.path).stat().st_mtime_ns}"
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = _build(spec)
    return _TOKENIZERS[key]


def piece_names(tokenizer: TextTokenizer, texts: Sequence[str], modulo: int) -> dict[int, str]:
    """``{id mod modulo: piece}`` over a sample of texts, the most frequent piece per id.

    Names the terms a model reaches without the text containing them (DeepBoW's expansion
    terms, hashed n-grams sharing a bucket): pass it to ``DeepBoW.explain(vocabulary=...)``.
    """
    counts: dict[int, dict[str, int]] = {}
    for text in texts:
        for i, piece in tokenizer.pieces(text):
            by_piece = counts.setdefault(int(i) % modulo, {})
            by_piece[piece] = by_piece.get(piece, 0) + 1
    return {i: max(c, key=lambda p: (c[p], p)) for i, c in counts.items()}
