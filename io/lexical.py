"""Lexical match features of (query, title) pairs: TF-IDF cosine, BM25 and overlap shares.

The classical relevance signals, computed from the two raw text columns so they can feed a
relevance model as dense inputs (``Batch.dense``) or score pairs alone as a baseline. Text
statistics (document frequencies, BM25 average title length) are fitted on the training
pairs only with :meth:`LexicalMatcher.fit`, saved with :meth:`LexicalMatcher.save` and
reloaded with :meth:`LexicalMatcher.load`, so validation and test pairs are scored with
the training statistics.

Terms are character n-grams (``ngram_range``, default 1-2) of the NFKC-normalised,
lower-cased text: they need no word segmentation, so Chinese, Japanese and space-separated
languages are handled alike. N-grams are hashed to 64-bit ids with
:func:`recis.ops.hashing.hash_strings` (deterministic across processes).

The features (:data:`FEATURES`, in this order; ``N`` pairs -> ``[N, 9]`` float32):

1. ``tfidf_cosine``: cosine of the two TF-IDF vectors (sublinear tf ``1 + ln tf``, smooth
   idf ``ln((1 + n) / (1 + df)) + 1`` over the training queries and titles, n-grams unseen in
   training dropped; scikit-learn's ``TfidfVectorizer(sublinear_tf=True)``);
2. ``bm25``: BM25 of the query's distinct n-grams against the title (``k1``, ``b``; idf
   ``ln(1 + (N - df + 0.5) / (df + 0.5))`` and average length over the training titles);
3. ``char_share``: share of the query's distinct characters found in the title;
4. ``bigram_share``: share of the query's distinct character bigrams found in the title;
5. ``char_jaccard``: Jaccard index of the two character sets;
6. ``query_in_title`` / 7. ``title_in_query``: 1 if one text contains the other;
8. ``log_query_len`` / 9. ``log_title_len``: ``ln(1 + characters)``.

Every step is vectorised over the pairs (Arrow compute and numpy) except the substring test.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from recis.errors import CheckpointError, ConfigError, DataError
from recis.features import LEXICAL_DIM, DenseFeature
from recis.ops.hashing import hash_strings

from .tokenizers import text_column

if TYPE_CHECKING:
    from recis.config import DataConfig

FEATURES = (
    "tfidf_cosine",
    "bm25",
    "char_share",
    "bigram_share",
    "char_jaccard",
    "query_in_title",
    "title_in_query",
    "log_query_len",
    "log_title_len",
)
_SALT = "lexical"
assert len(FEATURES) == LEXICAL_DIM  # the width a lexical DenseFeature declares

Texts: TypeAlias = pa.Array | pa.ChunkedArray | Sequence[str]


@dataclass(frozen=True)
class LexicalConfig:
    """How texts become terms and how BM25 saturates.

    Args:
        ngram_range: character n-gram sizes ``(min, max)`` of the TF-IDF and BM25 terms.
        normalize: Unicode normal form applied before lower-casing (``"none"``: as stored).
        lowercase: lower-case the texts.
        k1, b: BM25 term-frequency saturation and length normalisation.
    """

    ngram_range: tuple[int, int] = (1, 2)
    normalize: str = "NFKC"
    lowercase: bool = True
    k1: float = 1.2
    b: float = 0.75

    def __post_init__(self) -> None:
        lo, hi = self.ngram_range
        if not 1 <= lo <= hi:
            raise ConfigError(f"lexical.ngram_range: need 1 <= min <= max, got {self.ngram_range}")
        if self.normalize not in ("none", "NFC", "NFKC", "NFD", "NFKD"):
            raise ConfigError(f"lexical.normalize: {self.normalize!r} is not a Unicode form")
        if self.k1 < 0 or not 0 <= self.b <= 1:
            raise ConfigError(f"lexical: need k1 >= 0 and 0 <= b <= 1, got {self.k1}, {self.b}")


def normalize_texts(texts: Texts, config: LexicalConfig) -> pa.Array:
    """Strings (nulls as ``""``), Unicode-normalised and lower-cased as ``config`` says."""
    arr = texts if isinstance(texts, pa.Array | pa.ChunkedArray) else pa.array(texts, pa.string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not pa.types.is_string(arr.type):
        arr = arr.cast(pa.string())
    arr = pc.fill_null(arr, "")
    if config.normalize != "none":
        arr = pc.utf8_normalize(arr, config.normalize)
    if config.lowercase:
        arr = pc.utf8_lower(arr)
    return arr


@dataclass
class Grams:
    """Character n-grams of ``R`` texts, one entry per occurrence.

    ``row [M]`` the text each came from, ``term [M]`` its int64 hash, ``n [M]`` its size.
    """

    row: np.ndarray
    term: np.ndarray
    n: np.ndarray


def char_ngrams(texts: pa.Array, sizes: Sequence[int]) -> Grams:
    """All character n-grams of the given ``sizes`` of each text (one Arrow slice per position)."""
    lengths = pc.utf8_length(texts).to_numpy(zero_copy_only=False).astype(np.int64)
    pieces, rows, ns = [], [], []
    for n in sizes:
        for pos in range(int(lengths.max(initial=0)) - n + 1):
            active = np.flatnonzero(lengths >= pos + n)
            part = pc.utf8_slice_codeunits(texts.take(pa.array(active)), pos, pos + n)
            pieces.append(part)
            rows.append(active)
            ns.append(np.full(len(active), n, np.int8))
    if not pieces:
        empty = np.zeros(0, np.int64)
        return Grams(empty, empty, np.zeros(0, np.int8))
    flat = pa.concat_arrays(pieces)
    return Grams(np.concatenate(rows), hash_strings(flat, _SALT), np.concatenate(ns))


def _distinct(g: Grams, local: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (row, term) keys ``row * width + local`` sorted, their counts and sizes ``n``."""
    keys = g.row * width + local
    uniq, first, counts = np.unique(keys, return_index=True, return_counts=True)
    return uniq, counts, g.n[first]


class LexicalMatcher:
    """Fitted text statistics and the :data:`FEATURES` of (query, title) pairs.

    Example::

        matcher = LexicalMatcher.fit(train_queries, train_titles)
        x = matcher.features(test_queries, test_titles)  # [N, 9] float32
        matcher.save(run_dir / "lexical.safetensors")
    """

    def __init__(
        self,
        config: LexicalConfig,
        terms: np.ndarray,
        df_all: np.ndarray,
        df_title: np.ndarray,
        num_docs: int,
        num_titles: int,
        avg_title_len: float,
    ) -> None:
        self.config = config
        self.terms = terms  # sorted int64 hashes of the training n-grams
        self.df_all = df_all  # documents (queries and titles) holding each term
        self.df_title = df_title  # titles holding each term
        self.num_docs = num_docs
        self.num_titles = num_titles
        self.avg_title_len = avg_title_len
        n = float(num_docs)
        self.idf_tfidf = np.log((1.0 + n) / (1.0 + df_all)) + 1.0
        nt = float(num_titles)
        self.idf_bm25 = np.log(1.0 + (nt - df_title + 0.5) / (df_title + 0.5))
        self.pairs: dict[tuple[str | None, str | None], np.ndarray] = {}  # lexical_columns' memo

    @property
    def _sizes(self) -> list[int]:
        lo, hi = self.config.ngram_range
        return sorted(set(range(lo, hi + 1)) | {1, 2})  # 1 and 2 for the overlap shares

    @classmethod
    def fit(
        cls, queries: Texts, titles: Texts, config: LexicalConfig | None = None
    ) -> LexicalMatcher:
        """Document frequencies over the training queries and titles (titles alone for BM25)."""
        config = config or LexicalConfig()
        q, t = normalize_texts(queries, config), normalize_texts(titles, config)
        if len(q) != len(t) or len(q) == 0:
            raise DataError(
                f"lexical fit: need as many queries as titles (> 0), got {len(q)}, {len(t)}"
            )
        lo, hi = config.ngram_range
        sizes = list(range(lo, hi + 1))
        gq, gt = char_ngrams(q, sizes), char_ngrams(t, sizes)
        terms, local = np.unique(np.concatenate([gq.term, gt.term]), return_inverse=True)
        width = len(terms)
        kq, _, _ = _distinct(gq, local[: len(gq.term)], width)
        kt, ct, _ = _distinct(gt, local[len(gq.term) :], width)
        df_title = np.bincount(kt % width, minlength=width).astype(np.float64)
        df_all = df_title + np.bincount(kq % width, minlength=width)
        n = len(q)
        return cls(config, terms, df_all, df_title, 2 * n, n, float(ct.sum()) / n)

    def features(self, queries: Texts, titles: Texts) -> np.ndarray:
        """``[N, 9]`` float32, columns :data:`FEATURES`."""
        cfg = self.config
        q, t = normalize_texts(queries, cfg), normalize_texts(titles, cfg)
        if len(q) != len(t):
            raise DataError(f"lexical features: {len(q)} queries but {len(t)} titles")
        n_rows = len(q)
        gq, gt = char_ngrams(q, self._sizes), char_ngrams(t, self._sizes)
        uniq, local = np.unique(np.concatenate([gq.term, gt.term]), return_inverse=True)
        width = max(len(uniq), 1)
        kq, cq, nq = _distinct(gq, local[: len(gq.term)], width)
        kt, ct, nt = _distinct(gt, local[len(gq.term) :], width)
        _, iq, it = np.intersect1d(kq, kt, assume_unique=True, return_indices=True)
        rq, rt = kq // width, kt // width
        out = np.zeros((n_rows, len(FEATURES)), np.float64)
        out[:, 0] = self._tfidf_cosine(
            uniq[kq % width], rq, cq, nq, uniq[kt % width], rt, ct, nt, iq, it, n_rows
        )
        out[:, 1] = self._bm25(uniq[kt % width], rt, ct, nt, iq, it, n_rows)
        count = lambda rows, keep: np.bincount(rows[keep], minlength=n_rows)  # noqa: E731
        q1, t1, s1 = count(rq, nq == 1), count(rt, nt == 1), count(rq[iq], nq[iq] == 1)
        q2, s2 = count(rq, nq == 2), count(rq[iq], nq[iq] == 2)
        out[:, 2] = s1 / np.maximum(q1, 1)
        out[:, 3] = s2 / np.maximum(q2, 1)
        out[:, 4] = s1 / np.maximum(q1 + t1 - s1, 1)
        qs, ts = q.to_pylist(), t.to_pylist()
        out[:, 5] = [a in b for a, b in zip(qs, ts)]
        out[:, 6] = [b in a for a, b in zip(qs, ts)]
        out[:, 7] = np.log1p(pc.utf8_length(q).to_numpy(zero_copy_only=False))
        out[:, 8] = np.log1p(pc.utf8_length(t).to_numpy(zero_copy_only=False))
        return out.astype(np.float32)

    def _vocab(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Index of each hash in the training terms, and whether it is one."""
        pos = np.minimum(np.searchsorted(self.terms, hashes), max(len(self.terms) - 1, 0))
        return pos, (self.terms[pos] == hashes) if len(self.terms) else np.zeros(len(hashes), bool)

    def _in_range(self, n: np.ndarray) -> np.ndarray:
        lo, hi = self.config.ngram_range
        return (n >= lo) & (n <= hi)

    def _tfidf_cosine(self, hq, rq, cq, nq, ht, rt, ct, nt, iq, it, n_rows) -> np.ndarray:  # noqa: ANN001
        def weights(h: np.ndarray, r: np.ndarray, c: np.ndarray, n: np.ndarray) -> np.ndarray:
            pos, known = self._vocab(h)
            w = np.where(known & self._in_range(n), (1.0 + np.log(c)) * self.idf_tfidf[pos], 0.0)
            norm = np.sqrt(np.bincount(r, w * w, minlength=n_rows))
            return w / np.maximum(norm[r], 1e-12)

        wq, wt = weights(hq, rq, cq, nq), weights(ht, rt, ct, nt)
        return np.bincount(rq[iq], wq[iq] * wt[it], minlength=n_rows)

    def _bm25(self, ht, rt, ct, nt, iq, it, n_rows) -> np.ndarray:  # noqa: ANN001
        cfg = self.config
        pos, known = self._vocab(ht)
        keep = known & self._in_range(nt)
        dl = np.bincount(rt, np.where(keep, ct, 0), minlength=n_rows)
        tf = ct[it].astype(np.float64)
        denom = tf + cfg.k1 * (1 - cfg.b + cfg.b * dl[rt[it]] / max(self.avg_title_len, 1e-12))
        part = np.where(keep[it], self.idf_bm25[pos[it]] * tf * (cfg.k1 + 1) / denom, 0.0)
        return np.bincount(rt[it], part, minlength=n_rows)

    def save(self, path: str | Path) -> Path:
        """Write the statistics to a safetensors file (settings in its metadata)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "config": json.dumps(asdict(self.config)),
            "num_docs": str(self.num_docs),
            "num_titles": str(self.num_titles),
            "avg_title_len": repr(self.avg_title_len),
        }
        tensors = {"terms": self.terms, "df_all": self.df_all, "df_title": self.df_title}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # whole, or not there
        try:
            save_file(tensors, str(tmp), metadata=meta)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)  # (gone after the replace; a failed write's leftover)
        return path

    @classmethod
    def load(cls, path: str | Path) -> LexicalMatcher:
        """Statistics written by :meth:`save`."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), "np") as f:
                meta = f.metadata() or {}
            t = load_file(str(path))
            raw = json.loads(meta["config"])
            config = LexicalConfig(**{**raw, "ngram_range": tuple(raw["ngram_range"])})
            return cls(
                config,
                t["terms"],
                t["df_all"],
                t["df_title"],
                int(meta["num_docs"]),
                int(meta["num_titles"]),
                float(meta["avg_title_len"]),
            )
        except (OSError, KeyError, ValueError, SafetensorError) as err:
            raise CheckpointError(f"{path}: not lexical statistics ({err})") from None


class BM25Index:
    """BM25 (``k1``, ``b``) of a fixed corpus over character 1-2-grams, for top-k retrieval.

    The corpus is indexed once as a sparse ``[M, V]`` matrix of BM25 term weights; a batch of
    ``B`` queries is a dense ``[V, B]`` indicator of their distinct known terms, so scoring is
    one sparse-dense product ``[M, B]``.

    Example::

        idx = BM25Index(["red shoes", "blue phone case"])
        idx.topk(["phone"], k=1)[1]  # tensor([[1]])
    """

    sizes = (1, 2)

    def __init__(self, corpus: Sequence[str], k1: float = 1.2, b: float = 0.75) -> None:
        self._lex = LexicalConfig()
        g = char_ngrams(normalize_texts(list(corpus), self._lex), self.sizes)
        self.vocab, local = np.unique(g.term, return_inverse=True)
        m, v = len(corpus), len(self.vocab)
        keys, tf = np.unique(g.row * v + local, return_counts=True)
        rows, cols = keys // v, keys % v
        df = np.bincount(cols, minlength=v).astype(np.float64)
        idf = np.log(1.0 + (m - df + 0.5) / (df + 0.5))
        length = np.bincount(g.row, minlength=m).astype(np.float64)
        norm = k1 * (1 - b + b * length / max(length.mean(), 1e-9))
        w = idf[cols] * tf * (k1 + 1) / (tf + norm[rows])
        self.size = m
        self.matrix = torch.sparse_coo_tensor(
            torch.from_numpy(np.stack([rows, cols])),
            torch.from_numpy(w).float(),
            (m, v),
            check_invariants=False,
        ).coalesce()

    def scores(self, queries: Sequence[str]) -> torch.Tensor:
        """BM25 of every corpus text for every query, ``[B, M]`` (0 where no term is shared)."""
        g = char_ngrams(normalize_texts(list(queries), self._lex), self.sizes)
        pos = np.minimum(np.searchsorted(self.vocab, g.term), max(len(self.vocab) - 1, 0))
        hit = self.vocab[pos] == g.term if len(self.vocab) else np.zeros(len(pos), bool)
        ind = torch.zeros(len(self.vocab), len(queries))
        ind[torch.from_numpy(pos[hit]), torch.from_numpy(g.row[hit])] = 1.0
        return torch.sparse.mm(self.matrix, ind).T

    def topk(
        self, queries: Sequence[str], k: int, batch_size: int = 256
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``min(k, M)`` best scores and corpus rows per query, both ``[B, k]``, best first."""
        k = min(k, self.size)
        values, rows = [torch.zeros(0, k)], [torch.zeros(0, k, dtype=torch.long)]
        for i in range(0, len(queries), batch_size):
            top = self.scores(queries[i : i + batch_size]).topk(k, dim=1)
            values.append(top.values)
            rows.append(top.indices)
        return torch.cat(values), torch.cat(rows)


__all__ = [
    "FEATURES",
    "BM25Index",
    "LexicalConfig",
    "LexicalMatcher",
    "char_ngrams",
    "normalize_texts",
]


_MATCHERS: dict[str, LexicalMatcher] = {}


def matcher_for(f: DenseFeature) -> LexicalMatcher:
    """The fitted statistics of a lexical dense feature (one load per process and file
    version)."""
    assert f.lexical is not None
    path = Path(f.lexical.stats)
    if not path.is_file():
        raise ConfigError(
            f"data.schema.dense.{f.name}.lexical.stats: {path} does not exist; `recis vocab "
            "build CONFIG` (or `recis train`) fits it on the train files"
        )
    key = f"{path.resolve()}@{path.stat().st_mtime_ns}"
    if key not in _MATCHERS:
        _MATCHERS[key] = LexicalMatcher.load(path)
    return _MATCHERS[key]


_PAIR_MEMO = 1 << 17  # (query, title) pairs whose features a matcher remembers


def lexical_columns(table: pa.Table, f: DenseFeature) -> np.ndarray:
    """``[9, N]`` float32: a lexical dense feature's columns for the rows of ``table``.

    The matcher remembers the features of up to ``_PAIR_MEMO`` pairs, so from the second
    epoch on a pair is a dictionary lookup (on qbqtc the recipes then train as fast as
    from a precomputed column)."""
    assert f.lexical is not None
    q, t = (text_column(table.column(c)) for c in (f.lexical.query, f.lexical.title))
    matcher = matcher_for(f)
    memo = matcher.pairs
    keys = list(zip(q.to_pylist(), t.to_pylist()))
    todo = [i for i, k in enumerate(keys) if k not in memo]
    if len(memo) + len(todo) > _PAIR_MEMO:  # full: start again with this batch's pairs
        memo = matcher.pairs = {}
        todo = list(range(len(keys)))
    if todo:
        rows = pa.array(todo, pa.int64())
        new = matcher.features(q.take(rows), t.take(rows))
        for i, x in zip(todo, new):
            memo[keys[i]] = x
    if todo and len(todo) == len(keys):
        return new.T
    return (
        np.stack([memo[k] for k in keys], axis=1)
        if keys
        else np.zeros((LEXICAL_DIM, 0), np.float32)
    )


def lexical_features(dense: Sequence[DenseFeature]) -> dict[str, list[DenseFeature]]:
    """``{stats path: [features]}`` of the lexical dense features."""
    out: dict[str, list[DenseFeature]] = {}
    for f in dense:
        if f.lexical is not None:
            out.setdefault(f.lexical.stats, []).append(f)
    return out


def fit_lexical_stats(
    data: DataConfig, train_paths: str | list[str], only_missing: bool = False
) -> dict[str, int]:
    """Fit and save the statistics of every lexical dense feature on the **train** files
    (eval text never shapes them); ``{path: training pairs}``. Features naming one file
    share it: fitted on all their (query, title) pairs. ``only_missing``: keep the files
    that exist (the step run at train start)."""
    from .csv_options import CsvOptions
    from .split import read_input

    out: dict[str, int] = {}
    for path, feats in lexical_features(data.schema_.dense).items():
        if only_missing and Path(path).is_file():
            continue
        cols = list(dict.fromkeys(c for f in feats for c in f.sources))
        table = read_input(train_paths, data.format, cols, CsvOptions.from_config(data.csv))
        queries = [text_column(table.column(f.lexical.query)) for f in feats if f.lexical]
        titles = [text_column(table.column(f.lexical.title)) for f in feats if f.lexical]
        q, t = pa.chunked_array(queries, pa.string()), pa.chunked_array(titles, pa.string())
        try:
            LexicalMatcher.fit(q, t).save(path)
        except (OSError, SafetensorError) as err:  # safetensors wraps its I/O errors
            field = f"data.schema.dense.{feats[0].name}.lexical.stats"
            why = getattr(err, "strerror", None) or str(err)
            raise ConfigError(f"{field}: cannot write {path}: {why}") from None
        out[path] = len(q)
    return out
