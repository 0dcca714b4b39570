"""LIBSVM / SVMlight text, ``label [qid:Q] index:value ... [# comment]`` one row a line: the
layout of the learning-to-rank sets (MSLR-WEB10K/30K, Yahoo! LTR, LETOR, Istella) and of
the LIBSVM site's click logs (Criteo, Avazu, KDD 2012), read as Arrow tables.

The columns a file offers:

* ``label``: float64 (``+1`` / ``-1`` / ``0`` / graded ``0``-``4``);
* ``qid``: int64, null on a line without one (the query group of a ranking set);
* ``features``: ``map<int64, float32>``, the line's indices and values (a sparse row: what
  it leaves out is 0), read as weighted ids (``features.keys`` / ``features.values``);
* ``f<k>`` for any index ``k`` (``f1`` ... ``f136``): float32, the line's value of index
  ``k``, 0 where the line leaves it out, as a dense column.

Files are read in line-aligned blocks (:func:`recis.io.jsonl.blocks`); each block is parsed
with Arrow's string kernels (split on whitespace, then on ``:``), and only a block that fails
is looked at line by line, for the line to name (or, with ``skip_bad``, to leave out). Rows
are 0-based data rows (blank lines are not rows), lines 1-based physical lines, as for CSV
and JSON Lines.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from recis.errors import DataError

from .jsonl import Block, blocks

LABEL, QID, FEATURES = "label", "qid", "features"
DENSE_MAX = 1024  # indices up to this are offered as f<k> columns when no column list is given
_FEATURE = re.compile(r"f(0|[1-9]\d*)")
_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_LINE = re.compile(
    rf"\s*{_NUMBER}(?:\s+qid:\d+)?(?:\s+\d+:{_NUMBER})*\s*(?:#.*)?", re.ASCII | re.DOTALL
)
_PAIRS = re.compile(rf"\s*{_NUMBER}(?:\s+qid:\d+)?(?:\s+\d+:{_NUMBER})+\s*(?:#.*)?", re.ASCII)


def index_of(column: str) -> int | None:
    """The index ``k`` of a column named ``f<k>``, else None."""
    m = _FEATURE.fullmatch(column)
    return int(m.group(1)) if m else None


def schema(columns: list[str] | None, max_index: int) -> pa.Schema:
    """The columns a file offers: ``label``, ``qid``, ``features`` and the ``f<k>`` asked for
    (``columns`` None: ``f0`` / ``f1`` to ``f<max_index>`` when that is at most
    ``DENSE_MAX``)."""
    fields = [
        pa.field(LABEL, pa.float64()),
        pa.field(QID, pa.int64()),
        pa.field(FEATURES, pa.map_(pa.int64(), pa.float32())),
    ]
    if columns is None:
        ks = range(1, max_index + 1) if 0 < max_index <= DENSE_MAX else []
    else:
        ks = [k for k in map(index_of, columns) if k is not None]
    return pa.schema(fields + [pa.field(f"f{k}", pa.float32()) for k in ks])


def looks_like(lines: list[str]) -> bool:
    """Whether a file's first lines are of this layout: 80% of them read as lines of it (a
    bad one is named by the reader later), half with an ``index:value`` pair (a column of
    numbers alone is CSV)."""
    lines = [t.rstrip("\r\n") for t in lines if t.strip()]
    fits = sum(bool(_LINE.fullmatch(t)) for t in lines)
    pairs = sum(bool(_PAIRS.fullmatch(t)) for t in lines)
    return bool(lines) and fits >= 0.8 * len(lines) and pairs >= 0.5 * len(lines)


def bad_reason(text: bytes) -> str | None:
    """Why one line is not ``label [qid:Q] index:value ...`` (None: it is)."""
    try:
        line = text.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8 text"
    if _LINE.fullmatch(line.rstrip("\r")):
        return None
    return f"not 'label [qid:Q] index:value ...': {line.strip()[:80]!r}"


@dataclass
class Parsed:
    """One block's rows: labels, qids (null where absent) and the pairs of each row."""

    label: pa.Array
    qid: pa.Array
    offsets: np.ndarray  # [rows + 1] into keys / values
    keys: np.ndarray  # int64
    values: np.ndarray  # float32

    @property
    def rows(self) -> int:
        return len(self.label)

    def table(self, names: list[str]) -> pa.Table:
        """The columns ``names`` (label, qid, features, f<k>) of these rows."""
        dense = [n for n in names if index_of(n) is not None]
        cols: dict[str, pa.Array] = {LABEL: self.label, QID: self.qid}
        if FEATURES in names:
            offsets = pa.array(self.offsets.astype(np.int32))
            cols[FEATURES] = pa.MapArray.from_arrays(
                offsets, pa.array(self.keys), pa.array(self.values)
            )
        if dense:  # one scatter into a [rows, K] matrix for every f<k> asked for
            ks = np.array([index_of(n) for n in dense], np.int64)
            slot = np.full(int(max(ks.max(), self.keys.max(initial=0))) + 1, -1, np.int64)
            slot[ks] = np.arange(len(ks))
            rows = np.repeat(np.arange(self.rows), np.diff(self.offsets))
            where = slot[self.keys] if len(self.keys) else np.zeros(0, np.int64)
            hit = where >= 0
            m = np.zeros((len(ks), self.rows), np.float32)
            m[where[hit], rows[hit]] = self.values[hit]
            cols.update({n: pa.array(m[j]) for j, n in enumerate(dense)})
        return pa.table({n: cols[n] for n in names})


def parse(lines: list[bytes]) -> Parsed:
    """Lines of the layout (no blank line) parsed with Arrow's kernels; raises
    ``pa.ArrowInvalid`` (or ValueError) when one of them is not of the layout."""
    text = pa.array(lines, pa.binary()).cast(pa.string())
    if any(b"#" in t for t in lines):
        text = pc.replace_substring_regex(text, r"\s*#.*$", "")
    tokens = pc.ascii_split_whitespace(text)
    if pc.min(pc.list_value_length(tokens)).as_py() == 0:
        raise ValueError("a line holds only a comment")
    label = pc.list_element(tokens, 0).cast(pa.float64())
    rest = pc.list_slice(tokens, 1)
    flat = pc.list_flatten(rest)
    parent = pc.list_parent_indices(rest).to_numpy(zero_copy_only=False)
    pairs = pc.split_pattern(flat, ":", max_splits=1)
    if len(flat) and pc.min(pc.list_value_length(pairs)).as_py() != 2:
        raise ValueError("a token without ':'")
    key, value = pc.list_element(pairs, 0), pc.list_element(pairs, 1)
    is_qid = pc.equal(key, QID).to_numpy(zero_copy_only=False)
    qid = np.zeros(len(lines), np.int64)
    has = np.zeros(len(lines), bool)
    if is_qid.any():
        qid[parent[is_qid]] = value.filter(pa.array(is_qid)).cast(pa.int64()).to_numpy()
        has[parent[is_qid]] = True
    keep = pa.array(~is_qid)
    keys = key.filter(keep).cast(pa.int64()).to_numpy(zero_copy_only=False)
    values = value.filter(keep).cast(pa.float32()).to_numpy(zero_copy_only=False)
    if len(keys) and keys.min() < 0:
        raise ValueError("a negative index")
    counts = np.bincount(parent[~is_qid], minlength=len(lines))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return Parsed(label, pa.array(qid, mask=~has), offsets, keys, values)


@dataclass
class Scan:
    """What one pass over a file found: readable rows, the largest index, the lines left
    out (``(row, line, text)``) and the blank lines."""

    rows: int
    max_index: int
    bad_lines: list[tuple[int, int, str]] = field(default_factory=list)
    blank_lines: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def _block_rows(block: Block, path: str, skip_bad: bool, bad: list) -> Parsed | None:
    """One block parsed; a line that is not of the layout is a DataError naming the file,
    row and line, or with ``skip_bad`` left out (appended to ``bad``). None: no line left."""
    lines = block.lines()
    try:
        return parse([t for _, t in lines])
    except (pa.ArrowInvalid, ValueError):
        pass
    kept = []
    for row, (line, text) in enumerate(lines, start=block.row0):
        why = bad_reason(text)
        if why is None:
            kept.append(text)
        elif skip_bad:
            bad.append((row, line, text.decode("utf-8", "replace")[:200]))
        else:
            raise DataError(f"bad line: {why}", path=path, row=row, line=line)
    if len(kept) == len(lines):  # every line matched yet the block failed: name the first
        for row, (line, text) in enumerate(lines, start=block.row0):
            try:
                parse([text])
            except (pa.ArrowInvalid, ValueError) as err:
                raise DataError(f"bad line: {err}", path=path, row=row, line=line) from None
    return parse(kept) if kept else None


def scan(fs: pafs.FileSystem, path: str, skip_bad: bool = False) -> Scan:
    """Readable rows, largest index, bad and blank lines of ``path`` (one pass)."""
    bad: list[tuple[int, int, str]] = []
    blank: list[int] = []
    rows = top = 0
    for block in blocks(fs, path):
        blank += block.layout[1]
        parsed = _block_rows(block, path, skip_bad, bad)
        if parsed is not None:
            rows += parsed.rows
            top = max(top, int(parsed.keys.max(initial=0)))
    return Scan(rows, top, bad, np.asarray(blank, np.int64))


def read_blocks(
    fs: pafs.FileSystem, path: str, columns: list[str], skip_bad: bool = False
) -> Iterator[pa.Table]:
    """The file's readable rows in order, block by block, as tables of ``columns``."""
    for block in blocks(fs, path):
        parsed = _block_rows(block, path, skip_bad, [])
        if parsed is not None:
            yield parsed.table(columns)


def read_table(
    path: str, columns: list[str] | None = None, fs: pafs.FileSystem | None = None
) -> pa.Table:
    """A whole file as one table (``columns`` None: every column :func:`schema` offers)."""
    fs = fs or pafs.LocalFileSystem()
    found = scan(fs, path)
    if not found.rows:
        raise DataError("empty file (no rows)", path=path)
    names = schema(columns, found.max_index).names if columns is None else list(columns)
    for c in names:
        if c not in (LABEL, QID, FEATURES) and index_of(c) is None:
            raise DataError(
                "no such column in LIBSVM text (label, qid, features, f<k>)", path=path, column=c
            )
    return pa.concat_tables(read_blocks(fs, path, names))
