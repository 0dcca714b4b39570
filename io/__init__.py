"""recis.io: readers on pyarrow (parquet, ORC, CSV/TSV), batches, text tokenizers.

Synthetic data generators are application code: :mod:`recis.synthetic`.
"""

from .batch import Batch
from .convert import to_batch
from .factory import ParquetReader, make_reader, reader_from_config
from .loader import Loader, ShardDataset
from .reader import Reader
from .sources import CRITEO_COLUMNS, CsvOptions, resolve_paths

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
