"""Input validation: column presence and types per file, bad values per row.

Column problems (missing, wrong type, ids in a float column) are found once
per file from its Arrow schema and always raise. Row problems (null or NaN
label, null/NaN dense value under the ``raise`` policy, a list dense value of
the wrong length, weights not aligned with ids) are found per chunk with
vectorized masks; the reader raises on the first one or, with
``on_bad_row="skip"``, drops and quarantines them.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recis.errors import DataError
from recis.features import Schema

_LISTS = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list)


def is_list(t: pa.DataType) -> bool:
    return any(f(t) for f in _LISTS)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _is_string(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _leaf(t: pa.DataType) -> pa.DataType:
    return t.value_type if is_list(t) else t


def check_columns(schema: Schema, arrow: pa.Schema, path: str) -> None:
    """Raise DataError naming ``path`` and the column if a column is absent or mistyped."""

    def get(col: str) -> pa.DataType:
        i = arrow.get_field_index(col)
        if i < 0:
            raise DataError(
                f"missing column (file has {', '.join(arrow.names[:12])}"
                f"{', ...' if len(arrow.names) > 12 else ''})",
                path=path,
                column=col,
            )
        return arrow.field(i).type

    def bad(col: str, t: pa.DataType, want: str) -> None:
        raise DataError(f"wrong type {t}: expected {want}", path=path, column=col)

    for lab in schema.labels:
        t = get(lab.source)
        if not (_is_number(t) or pa.types.is_null(t)):
            bad(lab.source, t, "a number column")
    for f in schema.dense:
        t = get(f.source)
        if not (_is_number(_leaf(t)) or pa.types.is_null(t)):
            bad(f.source, t, "a number or list<number> column")
    for f in schema.sparse:
        t = get(f.source)
        leaf = _leaf(t)
        if pa.types.is_null(leaf):
            pass
        elif f.dtype == "int" and pa.types.is_floating(leaf):
            bad(f.source, t, "integer ids (ids in a float column); use int64 or list<int64>")
        elif f.dtype == "int" and not pa.types.is_integer(leaf):
            bad(f.source, t, "integer ids (int64 or list<int64>; dtype: string hashes strings)")
        elif f.dtype == "string" and not (_is_string(leaf) or pa.types.is_integer(leaf)):
            bad(f.source, t, "string ids (string or list<string>)")
        if f.weight_column:
            w = get(f.weight_column)
            if not _is_number(_leaf(w)) or is_list(w) != is_list(t):
                bad(f.weight_column, w, f"numbers shaped like {f.source} ({t})")
    for f in schema.text:
        t = get(f.source)
        if not (_is_string(t) or pa.types.is_null(t)):
            bad(f.source, t, "a string column")
    for col in schema.extras:
        t = get(col)
        if not _is_number(t):
            bad(col, t, "a number column")


def _nan_or_null(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    mask = col.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_floating(col.type):
        mask = mask | pc.fill_null(pc.is_nan(col), False).to_numpy(zero_copy_only=False)
    return mask


def list_lengths(col: pa.Array) -> np.ndarray:
    """Per-row lengths of a list array, nulls as 0 (int64 ``[B]``)."""
    return (
        pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    )


def bad_rows(table: pa.Table, schema: Schema, nan_policy: str) -> tuple[np.ndarray, list[str]]:
    """Rows that cannot become a valid example.

    Returns ``(code, reasons)``: ``code`` is int16 ``[N]``, 0 for a good row,
    else ``k + 1`` where ``reasons[k]`` is ``"column: what"`` of the first
    problem found in that row.
    """
    n = table.num_rows
    code = np.zeros(n, dtype=np.int16)
    reasons: list[str] = []

    def flag(mask: np.ndarray, column: str, what: str) -> None:
        if mask.any():
            reasons.append(f"{column}: {what}")
            code[(code == 0) & mask] = len(reasons)

    for lab in schema.labels:
        flag(_nan_or_null(table.column(lab.source)), lab.source, "null or NaN label")
    for f in schema.dense:
        col = table.column(f.source).combine_chunks()
        policy = f.on_nan or nan_policy
        if is_list(col.type):
            lengths = list_lengths(col)
            flag((lengths != 0) & (lengths != f.dim), f.source, f"list length is not {f.dim}")
            if policy == "raise":
                flat = col.flatten()
                row_of = np.repeat(np.arange(n), lengths)
                nan_rows = np.zeros(n, dtype=bool)
                nan_rows[row_of[_nan_or_null(flat)]] = True
                flag(nan_rows | (lengths == 0), f.source, "null or NaN dense value")
        elif policy == "raise":
            flag(_nan_or_null(col), f.source, "null or NaN dense value")
    for f in schema.sparse:
        if f.weight_column:
            ids = table.column(f.source).combine_chunks()
            w = table.column(f.weight_column).combine_chunks()
            if is_list(ids.type):
                flag(
                    list_lengths(ids) != list_lengths(w),
                    f.weight_column,
                    f"weights not aligned with {f.source}",
                )
            flag(
                _nan_or_null(w) & ids.is_valid().to_numpy(zero_copy_only=False),
                f.weight_column,
                "null or NaN weight",
            )
    return code, reasons
