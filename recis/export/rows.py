"""Request rows (JSON objects) -> an Arrow table for recis.io's validation and conversion."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from recis.errors import DataError
from recis.features import Schema
from recis.io import Batch, to_batch

_ABSENT = object()


def _lookup(row: Any, col: str) -> Any:
    """The value of column ``col`` in a JSON row: its own key, else the dotted path through
    nested objects as the reader resolves it in files (``user.geo.city``; ``items.id`` over
    an array of objects is the list of their ids; ``m.keys`` / ``m.values`` of an object
    used as a map, where it has no such key). ``_ABSENT`` where the row has no such path."""
    if not isinstance(row, dict):
        return _ABSENT
    if col in row:
        return row[col]
    head, dot, rest = col.partition(".")
    if not dot or head not in row:
        return _ABSENT
    value = row[head]
    if value is None:
        return None  # a null object: its fields are null
    if isinstance(value, list):  # an array of objects: the field of each
        found = [_lookup(v, rest) for v in value]
        return [None if v is _ABSENT else v for v in found]
    if isinstance(value, dict) and rest in ("keys", "values") and rest not in value:
        # as recis.io.jsonl reads keyed objects: an entry with a null value is left out
        kept = [(k, v) for k, v in value.items() if v is not None]
        return [k for k, _ in kept] if rest == "keys" else [v for _, v in kept]
    return _lookup(value, rest)


def rows_table(columns: list[str], rows: list[dict[str, Any]]) -> pa.Table:
    """JSON rows -> an Arrow table of ``columns`` (a column no row has is absent, and refused
    by name by the validation; a key not in ``columns`` is ignored like an extra column of a
    data file). A column named by a dotted path is read from nested objects when the row has
    no key of that name (:func:`_lookup`), as the reader reads struct and map columns."""
    arrays, names = [], []
    for col in columns:
        found = [_lookup(r, col) for r in rows]
        values = [None if v is _ABSENT else v for v in found]
        if all(v is _ABSENT for v in found):
            continue
        try:
            arrays.append(pa.array(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as err:
            raise DataError(f"values of mixed or unsupported types ({err})", column=col) from None
        names.append(col)
    return pa.table(arrays, names=names)


def request_batch(rows: list[dict[str, Any]], schema: Schema, nan_policy: str) -> Batch:
    """JSON rows (at least one) validated and converted as training data is, with the columns
    of ``schema`` (:func:`rows_table`, then :func:`recis.io.to_batch`); DataError names the
    bad column and row."""
    return to_batch(rows_table(schema.columns, rows), schema, "request", nan_policy=nan_policy)
