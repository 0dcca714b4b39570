"""Exceptions raised by recis.

Every error says where the fault is: the config field, or the file, row and
column of the data. Catch :class:`RecisError` to handle them all.
"""

from __future__ import annotations


class RecisError(Exception):
    """Base class of every error recis raises on purpose."""


class ConfigError(RecisError, ValueError):
    """A config file or override is invalid. The message names the field path."""


class DataError(RecisError, ValueError):
    """Input data is unreadable or invalid.

    Args:
        message: what is wrong.
        path: the file at fault, when known.
        column: the column at fault, when known.
        row: the row (0-based data row within the file, a CSV header not counted) at
            fault, when known.
        line: for CSV/TSV, the row's physical line (1-based, the header counted).
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        column: str | None = None,
        row: int | None = None,
        line: int | None = None,
    ) -> None:
        self.path = path
        self.column = column
        self.row = row
        self.line = line
        where = []
        if path is not None:
            where.append(f"file {path}")
        if column is not None:
            where.append(f"column {column!r}")
        if row is not None:
            where.append(f"row {row}" + (f" (line {line})" if line is not None else ""))
        elif line is not None:
            where.append(f"line {line}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class EmbeddingError(RecisError):
    """Misuse of the embedding engine (bad ids, unknown feature, ...)."""


class TableFullError(EmbeddingError):
    """A table has no free row and neither eviction nor growth is configured."""


class CheckpointError(RecisError):
    """A checkpoint is missing, incomplete or does not match the model."""


class NativeBuildError(RecisError, RuntimeError):
    """A native op (ops/csrc) is not built for this source and torch; the message says how to rebuild."""


class OutputError(RecisError):
    """A run's output (metrics, eval results, the run directory) cannot be written or is
    refused (a run directory holding another run). The message names the path."""
