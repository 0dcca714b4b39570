"""Vectorized, stable 64-bit feature hashing.

Two functions, both pure integer arithmetic on uint64 (so every machine,
process and run gives the same ids), vectorized with numpy (no Python loop
over values):

* :func:`hash_int64` - ``splitmix64(id XOR salt64)``: a bijection on 64-bit
  integers for a fixed salt, so distinct raw ids of one feature never collide.
* :func:`hash_strings` - FNV-1a 64 over the UTF-8 bytes of each string
  (looping over byte *positions*, vectorized over all strings), then mixed
  with the salt through splitmix64.

``salt`` is a string (normally the feature or table name); it is turned into
64 bits with FNV-1a, so equal raw values of two features land on different
ids unless they share a salt.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def salt64(salt: str | int | None) -> np.uint64:
    """64-bit salt from a name (FNV-1a of its UTF-8 bytes) or an int."""
    if salt is None:
        return np.uint64(0)
    if isinstance(salt, int):
        return np.uint64(salt & 0xFFFFFFFFFFFFFFFF)
    h = 0xCBF29CE484222325
    for b in salt.encode("utf-8"):
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return np.uint64(h)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer: a bijection on uint64 with good avalanche."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64, copy=True) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def hash_int64(ids: np.ndarray | Sequence[int], salt: str | int | None = None) -> np.ndarray:
    """Hash int ids to int64, injective for a fixed salt. Shape is kept."""
    arr = np.asarray(ids)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"hash_int64: expected integer ids, got dtype {arr.dtype}")
    x = arr.astype(np.int64, copy=False).view(np.uint64) ^ salt64(salt)
    return splitmix64(x).view(np.int64)


def id_uniform(ids: np.ndarray, dim: int, salt: str | int | None = None) -> np.ndarray:
    """``[N, dim]`` float64 in ``[0, 1)``: a fixed function of (salt, id, column).

    For initializing an id's embedding from the id itself, so that its first vector
    does not depend on which row, rank or world size it lands on.
    """
    x = splitmix64(np.asarray(ids, np.int64).reshape(-1).view(np.uint64) ^ salt64(salt))
    with np.errstate(over="ignore"):
        z = splitmix64(x[:, None] + np.arange(dim, dtype=np.uint64)[None] * _M2)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def hash_strings(
    values: pa.Array | pa.ChunkedArray | Sequence[str], salt: str | int | None = None
) -> np.ndarray:
    """Hash strings (Arrow string array or a list of str) to int64 ids.

    Nulls hash like the empty string; drop them before calling if they mean "no id".
    """
    arr = (
        values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(values, pa.string())
    )
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = pc.cast(arr, pa.string())
    if pa.types.is_large_string(arr.type):
        arr = pc.cast(arr, pa.string())
    arr = pc.fill_null(arr, "")
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + n + 1]
    data = arr.buffers()[2]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    starts = offsets[:-1].astype(np.int64)
    lengths = (offsets[1:] - offsets[:-1]).astype(np.int64)
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    max_len = int(lengths.max()) if n else 0
    with np.errstate(over="ignore"):
        # loop over byte positions; each step is vectorized over the strings still that long
        active = np.arange(n)
        for pos in range(max_len):
            active = active[lengths[active] > pos]
            byte = data[starts[active] + pos].astype(np.uint64)
            h[active] = (h[active] ^ byte) * _FNV_PRIME
    return splitmix64(h ^ salt64(salt)).view(np.int64)
