"""recis.io: readers on pyarrow (parquet, ORC, CSV/TSV), batches, synthetic data."""

from .batch import Batch
from .convert import to_batch
from .factory import make_reader, reader_from_config
from .loader import Loader, ShardDataset
from .reader import ParquetReader, Reader
from .sources import CRITEO_COLUMNS, CsvOptions, resolve_paths
from .synthetic import SyntheticInfo, generate_ctr, load_info
from .synthetic_multitask import MultiTaskInfo, generate_ctr_cvr  # noqa: F401
from .synthetic_relevance import generate_relevance
from .synthetic_retrieval import generate_retrieval

__all__ = [
    "CRITEO_COLUMNS",
    "Batch",
    "CsvOptions",
    "Loader",
    "ParquetReader",
    "Reader",
    "ShardDataset",
    "SyntheticInfo",
    "generate_ctr",
    "generate_relevance",
    "generate_retrieval",
    "load_info",
    "make_reader",
    "reader_from_config",
    "resolve_paths",
    "to_batch",
]
