"""Hive-style partition columns: the ``key=value`` folders of Spark's ``partitionBy`` and of
partitioned Hive tables (``/warehouse/clicks/dt=2024-01-01/country=de/part-0.parquet``).

The files under such folders do not hold the partition columns: their values are in the
path. A schema may name them like any column; each file then gets the column, constant,
from its path. A value that is an integer in every file's path is an int64 column, anything
else a string; Hive's ``__HIVE_DEFAULT_PARTITION__`` is null. A column the file itself holds
wins over its folder's.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

import pyarrow as pa

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
_INTEGER = re.compile(r"^-?[0-9]{1,18}$")


def values(path: str) -> dict[str, str | None]:
    """``key -> value`` of the ``key=value`` folders in ``path`` (URL-unquoted, as Spark and
    Hive escape them; the innermost folder wins for a key given twice)."""
    out: dict[str, str | None] = {}
    for part in path.replace("\\", "/").split("/")[:-1]:
        key, eq, value = part.partition("=")
        if eq and key:
            text = unquote(value)
            out[unquote(key)] = None if text == HIVE_NULL else text
    return out


def types(per_file: list[dict[str, str | None]]) -> dict[str, pa.DataType]:
    """Each partition key's column type over all files: int64 when every value is an
    integer, else string."""
    seen: dict[str, list[str]] = {}
    for parts in per_file:
        for key, value in parts.items():
            seen.setdefault(key, []).extend([] if value is None else [value])
    return {
        k: pa.int64() if all(_INTEGER.match(v) for v in vs) else pa.string()
        for k, vs in seen.items()
    }


def constant(value: str | None, t: pa.DataType, n: int) -> pa.Array:
    """``n`` rows of a partition value as a column of type ``t``."""
    if value is None:
        return pa.nulls(n, t)
    return pa.array([int(value) if pa.types.is_int64(t) else value] * n, t)
