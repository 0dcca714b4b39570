"""recis.io: readers on pyarrow, batches, synthetic data."""

from .batch import Batch
from .convert import to_batch
from .reader import ParquetReader, resolve_paths
from .synthetic import SyntheticInfo, generate_ctr, load_info
from .synthetic_multitask import MultiTaskInfo, generate_ctr_cvr  # noqa: F401

__all__ = [
    "Batch",
    "ParquetReader",
    "SyntheticInfo",
    "generate_ctr",
    "load_info",
    "resolve_paths",
    "to_batch",
]
