"""recis.io: readers on pyarrow (parquet, ORC, CSV/TSV), batches, text tokenizers.

Synthetic data generators are application code: :mod:`recis.synthetic`.

The names below load on first use: the batch and the readers need torch and torchrec, and
the tools that only move Arrow tables (``recis split``, quantiles, vocabularies) do not
(``recis split`` of a small file took 7.9 s with them, on a 2-core machine).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from recis.lazy import lazy_names

if TYPE_CHECKING:
    from .batch import Batch
    from .convert import to_batch
    from .factory import ParquetReader, make_reader, reader_from_config
    from .loader import Loader, ShardDataset
    from .reader import Reader
    from .sources import CRITEO_COLUMNS, CsvOptions, resolve_paths

_HOME = {
    "CRITEO_COLUMNS": "sources",
    "Batch": "batch",
    "CsvOptions": "sources",
    "Loader": "loader",
    "ParquetReader": "factory",
    "Reader": "reader",
    "ShardDataset": "loader",
    "make_reader": "factory",
    "reader_from_config": "factory",
    "resolve_paths": "sources",
    "to_batch": "convert",
}

__all__ = [
    "CRITEO_COLUMNS",
    "Batch",
    "CsvOptions",
    "Loader",
    "ParquetReader",
    "Reader",
    "ShardDataset",
    "make_reader",
    "reader_from_config",
    "resolve_paths",
    "to_batch",
]


__getattr__ = lazy_names(__name__, _HOME)
