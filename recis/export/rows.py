"""Request rows (JSON objects) -> an Arrow table for recis.io's validation and conversion."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from recis.errors import DataError


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
