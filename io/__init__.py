"""recis.io: readers on pyarrow, batches, synthetic data."""

from .batch import Batch
from .convert import to_batch
from .reader import ParquetReader, resolve_paths
from .synthetic import SyntheticInfo, generate_ctr, load_info
from .synthetic_relevance import generate_relevance
from .synthetic_retrieval import generate_retrieval

__all__ = [
    "Batch",
    "ParquetReader",
    "SyntheticInfo",
    "generate_ctr",
    "generate_relevance",
    "generate_retrieval",
    "load_info",
    "resolve_paths",
    "to_batch",
]
