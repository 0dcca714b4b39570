"""recis.ops: low-level operators on the hot path (hashing, id mapping, jagged helpers)."""

from .hashing import hash_int64, hash_strings, salt64
from .id_mapper import IdMapper, MapResult

__all__ = ["IdMapper", "MapResult", "hash_int64", "hash_strings", "salt64"]
