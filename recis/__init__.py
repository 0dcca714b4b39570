"""recis: sparse-dense training for industrial recommendation and search models."""

from recis.errors import ConfigError, DataError, RecisError

__version__ = "0.1.0"

__all__ = ["ConfigError", "DataError", "RecisError", "__version__"]
