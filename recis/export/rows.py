"""Request rows (JSON objects) -> an Arrow table for recis.io's validation and conversion."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from recis.errors import DataError
from recis.features import Schema
from recis.io import Batch, to_batch


def rows_table(columns: list[str], rows: list[dict[str, Any]]) -> pa.Table:
    """JSON rows -> an Arrow table of ``columns`` (a column no row has is absent, and refused
    by name by the validation; a key not in ``columns`` is ignored like an extra column of a
    data file)."""
    arrays, names = [], []
    for col in columns:
        values = [r.get(col) for r in rows]
        if all(v is None for v in values) and not any(col in r for r in rows):
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
