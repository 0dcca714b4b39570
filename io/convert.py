"""Arrow table -> :class:`~recis.io.batch.Batch`, following a :class:`~recis.features.Schema`.

Shapes: ``B`` rows, ``Dd`` dense width (sum of the dense features' ``dim``),
``T`` text length. Every step is vectorized over the batch (Arrow compute and
numpy); there is no Python loop over rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recis.errors import DataError
from recis.features import DenseFeature, LabelSpec, Schema, SparseFeature, TextFeature
from recis.ops.hashing import hash_strings

from .batch import Batch
from .lexical import lexical_columns
from .tokenizers import (  # noqa: F401 - load_tokenizer re-exported
    load_tokenizer,
    text_column,
    tokenizer_for,
)
from .validate import (
    bad_rows,
    check_columns,
    id_column,
    is_list,
    is_string,
    label_values,
    list_lengths,
    parse_int_strings,
    text_numbers,
)


def _array(table: pa.Table | pa.RecordBatch, name: str) -> pa.Array:
    col = table.column(name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _writable(x: np.ndarray) -> np.ndarray:
    """Arrow's zero-copy numpy views are read-only; tensors over them must not be written."""
    return x if x.flags.writeable else x.copy()


def _floats(
    arr: pa.Array | pa.ChunkedArray, fill: float, out: np.ndarray | None = None
) -> np.ndarray:
    """float32 values with nulls, NaNs and infs replaced by ``fill`` (into ``out`` if given)."""
    if out is None:
        out = np.empty(len(arr), dtype=np.float32)
    if pa.types.is_null(arr.type):
        out[:] = fill
        return out
    if pa.types.is_decimal(arr.type):  # numpy would get Python Decimal objects
        arr = pc.cast(arr, pa.float64(), safe=False)
    with np.errstate(over="ignore"):  # past float32's range: inf, then the fill below
        np.copyto(out, arr.to_numpy(zero_copy_only=False), casting="unsafe")
    if arr.null_count or pa.types.is_floating(arr.type):
        # nulls come out as NaN; inf follows the NaN policy (validation raised on it if asked)
        np.copyto(out, np.float32(fill), where=~np.isfinite(out))
    return out


def _dense(table: pa.Table, feats: list[DenseFeature]) -> np.ndarray:
    """``[B, Dd]`` float32."""
    n = table.num_rows
    # feature-major while filling (each feature writes a contiguous row), one transpose at the end
    buf = np.empty((sum(f.dim for f in feats), n), dtype=np.float32)
    j = 0
    for f in feats:
        v = buf[j : j + f.dim]
        if f.lexical is not None:  # computed from two text columns
            v[:] = lexical_columns(table, f)
            j += f.dim
            continue
        col = table.column(f.source)
        if is_list(col.type):
            col = _array(table, f.source)
            lengths = list_lengths(col)
            v[:] = f.fill
            full = lengths == f.dim  # empty / null rows keep the fill value
            flat = _floats(col.flatten(), f.fill)
            v[:, full] = flat[_flat_index(lengths, full, f.dim)].reshape(-1, f.dim).T
        elif is_string(col.type):  # numbers as text, checked per row (validate.bad_rows)
            _floats(text_numbers(col)[0], f.fill, out=v[0])
        else:
            _floats(col, f.fill, out=v[0])  # from the chunked column: no Arrow concat first
        if f.transform == "log":
            # torch's log1p is vectorised (SLEEF); numpy's float32 log1p is a scalar loop
            # here: 0.08 ms against 0.78 ms per 65,536 values on the 2-core AVX2 machine
            t = torch.from_numpy(v)
            torch.log1p(t.clamp_(min=0.0), out=t)
        elif f.transform == "standardize":
            np.multiply(np.subtract(v, f.mean, out=v), 1.0 / f.std, out=v)
        elif f.transform == "quantile":
            edges = np.asarray(f.boundaries, dtype=np.float32)
            v[:] = np.searchsorted(edges, v, side="right") / np.float32(len(edges))
        j += f.dim
    return np.ascontiguousarray(buf.T)


def _flat_index(lengths: np.ndarray, keep: np.ndarray, dim: int) -> np.ndarray:
    """Positions in the flattened values of the rows in ``keep`` (each ``dim`` long)."""
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))[keep]
    return (starts[:, None] + np.arange(dim)[None, :]).reshape(-1)


def _truncate(
    values: pa.Array, lengths: np.ndarray, max_len: int, keep_last: bool
) -> tuple[pa.Array, np.ndarray]:
    """Keep at most ``max_len`` values per row (the first or the last ones)."""
    if not lengths.size or lengths.max() <= max_len:
        return values, lengths
    row_start = np.repeat(np.cumsum(lengths) - lengths, lengths)
    pos = np.arange(len(values)) - row_start  # position of each value within its row
    if keep_last:
        mask = pos >= np.repeat(lengths, lengths) - max_len
    else:
        mask = pos < max_len
    return values.filter(pa.array(mask)), np.minimum(lengths, max_len)


def _ids(
    table: pa.Table, f: SparseFeature
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """int64 ids ``[sum(L)]``, lengths ``[B]`` (None: one id per row), weights or None."""
    col, weights = id_column(table, f)  # a separator splits strings into lists here
    if f.weight_column:  # (never with a separator: the config refuses the two together)
        weights = _array(table, f.weight_column)
    if isinstance(col, pa.ChunkedArray) and (is_list(col.type) or col.null_count):
        col = col.combine_chunks()  # one Arrow array for the list/null handling below
    if pa.types.is_null(col.type):
        n = len(col)
        return np.zeros(0, np.int64), np.zeros(n, np.int64), np.zeros(0, np.float32)
    if is_list(col.type):
        lengths = list_lengths(col)
        values = col.flatten()
        w = weights.flatten() if weights is not None else None
        if values.null_count:  # a null id inside a list means "no id": drop it
            valid = values.is_valid().to_numpy(zero_copy_only=False)
            rows = np.repeat(np.arange(len(col)), lengths)
            lengths = np.bincount(rows[valid], minlength=len(col)).astype(np.int64)
            values = values.filter(pa.array(valid))
            w = w.filter(pa.array(valid)) if w is not None else None
        if f.max_len is not None:
            if w is not None:
                w, _ = _truncate(w, lengths, f.max_len, f.truncate == "last")
            values, lengths = _truncate(values, lengths, f.max_len, f.truncate == "last")
    elif col.null_count == 0:
        lengths, values, w = None, col, weights  # one id per row
    else:  # a null scalar is "no id"
        valid = col.is_valid()
        lengths = valid.to_numpy(zero_copy_only=False).astype(np.int64)
        values = col.filter(valid)
        w = weights.filter(valid) if weights is not None else None
    if f.dtype == "string" or (f.dtype == "auto" and is_string(values.type)):
        ids = hash_strings(values, salt=f.table_name)
    elif is_string(values.type):  # dtype int: decimal strings, checked by validate.bad_rows
        ids = parse_int_strings(values)
    else:
        # uint64 keeps its 64 bits (>= 2**63 become negative int64; validate.check_files
        # refuses a table whose ids are uint64 in one place and signed in another)
        # may be a read-only view of Arrow memory: batches concatenate it into new arrays
        ids = values.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    wv = None if w is None else _floats(w, 1.0)
    return ids, lengths, wv


def _text(table: pa.Table, feats: list[TextFeature]) -> dict[str, np.ndarray]:
    """name -> token ids ``[B, T]`` int64 and name_mask -> ``[B, T]`` int64 (``T = max_length``).

    Tokenizers: :mod:`recis.io.tokenizers` (n-gram hashing, a trained vocabulary, or HF).
    A ``list<string>`` row (the RecIS / TorchEasyRec layouts) is its strings joined by spaces.
    """
    out: dict[str, np.ndarray] = {}
    for f in feats:
        texts = pc.fill_null(text_column(table.column(f.source)), "").to_pylist()
        ids, mask = tokenizer_for(f).encode(texts, f.max_length, keep_last=f.truncate == "last")
        out[f.name] = ids
        out[f"{f.name}_mask"] = mask
    return out


def _label(table: pa.Table, spec: LabelSpec) -> np.ndarray:
    """``[B]`` float32 label (a single-element list is its element), binarized at
    ``positive_at`` when set."""
    v, _, _ = label_values(table.column(spec.source), spec)
    if spec.positive_at is not None:
        return (v >= spec.positive_at).astype(np.float32)
    return v.astype(np.float32)


def _extra(col: pa.Array) -> np.ndarray:
    """``[B]`` values of a number column, or the single elements of a list column."""
    if pa.types.is_decimal(col.type) or (
        is_list(col.type) and pa.types.is_decimal(col.type.value_type)
    ):
        col = pc.cast(
            col, pa.list_(pa.float64()) if is_list(col.type) else pa.float64(), safe=False
        )
    if is_list(col.type):
        lengths = list_lengths(col)
        flat = col.flatten().to_numpy(zero_copy_only=False)
        return flat[np.cumsum(lengths) - lengths]  # validated: one value per row
    return _writable(col.to_numpy(zero_copy_only=False))


def _lengths(n: np.ndarray | None, rows: int) -> np.ndarray:
    return np.ones(rows, np.int64) if n is None else n


@dataclass
class Columns:
    """Converted rows as numpy arrays, cheap to slice and concatenate into batches.

    Readers convert a whole shuffle chunk at once (per-column overhead paid once
    per chunk, not per batch) and cut batches from it with :meth:`slice`.
    ``ids[k]`` is ``(values [sum L], lengths [B], weights [sum L] or None)``; lengths
    None means one id per row (a scalar column without nulls: no lengths to cut or sum).
    """

    keys: list[str]
    ids: list[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]
    weighted: bool
    dense: np.ndarray
    labels: dict[str, np.ndarray]
    text: dict[str, np.ndarray]
    extras: dict[str, np.ndarray]
    offsets: list[np.ndarray | None] | None = None  # per key, cumsum of lengths (lazy)

    @property
    def num_rows(self) -> int:
        return int(self.dense.shape[0])

    def slice(self, a: int, b: int) -> Columns:
        if self.offsets is None:
            self.offsets = [
                None if n is None else np.concatenate(([0], n.cumsum())) for _, n, _ in self.ids
            ]
        ids = []
        for (v, n, w), off in zip(self.ids, self.offsets):
            lo, hi = (a, b) if off is None else (int(off[a]), int(off[b]))
            ids.append((v[lo:hi], None if n is None else n[a:b], None if w is None else w[lo:hi]))

        def cut(d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {k: x[a:b] for k, x in d.items()}

        return Columns(
            self.keys,
            ids,
            self.weighted,
            self.dense[a:b],
            cut(self.labels),
            cut(self.text),
            cut(self.extras),
        )

    @staticmethod
    def concat(parts: list[Columns]) -> Columns:
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        ids = []
        for k in range(len(first.keys)):
            vs = [p.ids[k] for p in parts]
            w = None if vs[0][2] is None else np.concatenate([x[2] for x in vs])
            n = None
            if any(x[1] is not None for x in vs):
                n = np.concatenate([_lengths(x[1], len(x[0])) for x in vs])
            ids.append((np.concatenate([x[0] for x in vs]), n, w))

        def cat(columns: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
            return {k: np.concatenate([c[k] for c in columns]) for k in columns[0]}

        return Columns(
            first.keys,
            ids,
            first.weighted,
            np.concatenate([p.dense for p in parts]),
            cat([p.labels for p in parts]),
            cat([p.text for p in parts]),
            cat([p.extras for p in parts]),
        )

    def to_batch(self) -> Batch:
        empty = np.zeros(0, np.int64)
        values = [v for v, _, _ in self.ids]
        weights = (
            [w if w is not None else np.ones(len(v), np.float32) for v, _, w in self.ids]
            if self.weighted
            else []
        )
        # length_per_key from numpy: KJT would otherwise sum lengths with a torch op, which
        # costs milliseconds per batch when torch's intra-op pool is busy with training
        kjt = KeyedJaggedTensor(
            keys=list(self.keys),
            values=torch.from_numpy(np.concatenate(values) if values else empty),
            lengths=torch.from_numpy(
                np.concatenate([_lengths(n, self.num_rows) for _, n, _ in self.ids])
                if values
                else empty
            ),
            weights=torch.from_numpy(np.concatenate(weights)) if self.weighted else None,
            stride=self.num_rows,
            length_per_key=[len(v) for v in values],
        )

        def t(d: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
            return {k: torch.from_numpy(np.ascontiguousarray(x)) for k, x in d.items()}

        return Batch(
            sparse=kjt,
            dense=torch.from_numpy(np.ascontiguousarray(self.dense)),
            labels=t(self.labels),
            text=t(self.text),
            extras=t(self.extras),
        )


def convert_columns(table: pa.Table | pa.RecordBatch, schema: Schema) -> Columns:
    """Convert rows already validated (see :func:`to_batch`) to numpy :class:`Columns`."""
    weighted = any(f.weighted for f in schema.sparse)
    ids = []
    for f in schema.sparse:
        v, n, w = _ids(table, f)
        # KJT weights are per value for all keys: unweighted features weigh 1 (sums unchanged)
        ids.append((v, n, w if weighted else None))
    return Columns(
        keys=[f.name for f in schema.sparse],
        ids=ids,
        weighted=weighted,
        dense=_dense(table, schema.dense),
        labels={s.name: _label(table, s) for s in schema.labels},
        text=_text(table, schema.text),
        extras={c: _extra(_array(table, c)) for c in schema.extras},
    )


def convert(table: pa.Table | pa.RecordBatch, schema: Schema) -> Batch:
    """Build a Batch from rows already validated (see :func:`to_batch`)."""
    return convert_columns(table, schema).to_batch()


def to_batch(
    rb: pa.Table | pa.RecordBatch,
    schema: Schema,
    path: str | None = None,
    offset: int = 0,
    nan_policy: str = "fill",
) -> Batch:
    """Validate and convert rows. ``offset`` is the row of ``rb[0]`` within ``path`` (for errors).

    Raises DataError naming ``path``, the column and the row on the first problem.
    """
    table = pa.Table.from_batches([rb]) if isinstance(rb, pa.RecordBatch) else rb
    check_columns(schema, table.schema, path or "<memory>")
    code, reasons = bad_rows(table, schema, nan_policy)
    if code.any():
        i = int(np.flatnonzero(code)[0])
        column, what = reasons[code[i] - 1].split(": ", 1)
        raise DataError(what, path=path, column=column, row=offset + i)
    return convert(table, schema)
