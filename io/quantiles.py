"""Quantile boundaries of numeric columns, for ``DenseFeature(transform="quantile")``.

Compute them on the training files only (never on eval or test data) and put them in
the config's ``boundaries``; the transform then maps a value to its bucket / count.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from recis.errors import DataError

from . import nested


def quantile_boundaries(
    values: np.ndarray | pa.Array | pa.ChunkedArray, buckets: int
) -> list[float]:
    """Distinct inner quantiles ``q(1/buckets) .. q((buckets-1)/buckets)`` of ``values``.

    Nulls and NaNs are ignored; ties collapse, so a column with few distinct values gets
    fewer boundaries. Values are rounded to 6 significant digits (readable YAML).
    Shapes: ``values [N]`` -> at most ``buckets - 1`` increasing floats.
    """
    if buckets < 2:
        raise ValueError(f"buckets must be >= 2, got {buckets}")
    if isinstance(values, pa.ChunkedArray | pa.Array):
        values = values.to_numpy(zero_copy_only=False)
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if not v.size:
        return []
    qs = np.quantile(v, np.arange(1, buckets) / buckets)
    return sorted({float(f"{x:.6g}") for x in qs})


def boundaries_from_files(
    paths: str | os.PathLike | list, columns: list[str], buckets: int = 16, format: str = "parquet"
) -> dict[str, list[float]]:
    """``{column: boundaries}`` over the numeric ``columns`` of the (training) files."""
    data = ds.dataset(paths if isinstance(paths, list) else str(paths), format=format)
    found = nested.paths(data.schema)  # a field inside a struct column by its dotted path
    missing = [c for c in columns if c not in found]
    if missing:
        raise DataError(
            "no such column for quantile boundaries", path=str(paths), column=missing[0]
        )
    table = data.to_table(columns={c: pc.field(*found[c][0]) for c in columns})
    return {c: quantile_boundaries(table[c], buckets) for c in columns}
