"""Probe loops of :class:`recis.ops.IdMapper`'s hash table: find and insert.

The table is two arrays shared with the mapper: ``slots`` int32 ``[S]`` (``EMPTY`` -1,
``TOMB`` -2, else ``tag << rbits | row``) and ``row_key`` uint64 ``[C]``. A key's home
slot is ``((key * 0x9E3779B97F4A7C15) >> 32) * S >> 32`` for ``S`` slots (the top half of
its Fibonacci hash scaled to ``[0, S)``: any slot count works, so tables need not round
their slots up to a power of two), then linear probing. ``rbits`` (:func:`row_bits`) low
bits of a slot hold its row, the ``31 - rbits`` bits above them a tag of the key (the top
bits of ``key * 0xC2B2AE3D27D4EB4F``): a probe reads ``row_key`` (a cache miss) only for
slots whose tag matches, which keeps long probes at a high load factor cheap. Two implementations with identical results: C++ (``csrc/id_mapper.cpp``,
built at install time by :mod:`recis.ops.build`) and vectorized numpy (one array
operation per probe round over all keys still probing).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

EMPTY = np.int32(-1)
TOMB = np.int32(-2)
_FIB = np.uint64(0x9E3779B97F4A7C15)
_TAG = np.uint64(0xC2B2AE3D27D4EB4F)
_32 = np.uint64(32)
EMPTY_I32 = torch.zeros(0, dtype=torch.int32)  # "no row_last": an empty int32 tensor
EMPTY_I64 = torch.zeros(0, dtype=torch.int64)  # "no hints": an empty int64 tensor


def native_kernels() -> Any:
    """The C++ probe loops (``ops/csrc/id_mapper.cpp``), or None with ``RECIS_NATIVE=0``.

    Built at install time (``make native``, see :mod:`recis.ops.build`) and only
    loaded here, never compiled. A missing or stale build raises a one-line
    :class:`~recis.errors.NativeBuildError` saying how to rebuild; ``RECIS_NATIVE=0``
    runs the numpy loops instead (identical results).
    """
    from .build import native  # not at import: `python -m recis.ops.build` runs it

    return native("id_mapper")


def home(keys: np.ndarray, n_slots: int) -> np.ndarray:
    """Home slot of each uint64 key among ``n_slots`` (< 2^32), int64 ``[N]``."""
    with np.errstate(over="ignore"):
        return ((((keys * _FIB) >> _32) * np.uint64(n_slots)) >> _32).astype(np.int64)


def row_bits(capacity: int) -> int:
    """Bits of a slot that hold its row, for rows ``[0, capacity)`` (at most 31)."""
    return min(31, max(1, (capacity - 1).bit_length()))


def tags(keys: np.ndarray, rbits: int) -> np.ndarray:
    """Each uint64 key's tag, shifted above the ``rbits`` row bits: int32 ``[N]``."""
    tbits = 31 - rbits
    if tbits <= 0:
        return np.zeros(len(keys), np.int32)
    with np.errstate(over="ignore"):
        t = (keys * _TAG) >> np.uint64(64 - tbits)
    return (t.astype(np.int64) << rbits).astype(np.int32)


def _next(pos: np.ndarray, n_slots: int) -> np.ndarray:
    """The slot after each of ``pos`` (linear probing wraps around)."""
    pos = pos + 1
    pos[pos == n_slots] = 0
    return pos


def find(
    slots: np.ndarray,
    row_key: np.ndarray,
    keys: np.ndarray,
    nat: Any,
    rbits: int,
    rows: bool = False,
    row_last: np.ndarray | None = None,
    touch: int | None = None,
) -> np.ndarray:
    """Slot position (or row, if ``rows``) of each uint64 key, -1 where absent; ``rbits``:
    :func:`row_bits` of the table.

    With ``nat`` (the native module) and ``touch``, found rows also get
    ``row_last[row] = touch``; the numpy path leaves that to the caller. numpy:
    the first probe round runs on all keys without index bookkeeping, later
    rounds only on the few keys still probing.
    """
    if nat is not None:
        out = nat.find(
            torch.from_numpy(slots),
            torch.from_numpy(row_key.view(np.int64)),
            torch.from_numpy(keys.view(np.int64)),
            not rows,
            torch.from_numpy(row_last) if touch is not None and row_last is not None else EMPTY_I32,
            touch or 0,
            rbits,
        )
        return out.numpy()
    n = len(slots)
    mask = np.int32((1 << rbits) - 1) if rbits < 31 else np.int32(0x7FFFFFFF)
    tag = tags(keys, rbits)
    pos = home(keys, n)
    s = slots[pos]
    row = s & mask
    hit = (s >= 0) & ((s & ~mask) == tag)
    hit &= row_key[np.where(hit, row, 0)] == keys
    out = np.where(hit, row if rows else pos, -1).astype(np.int64)
    go = s != EMPTY
    go &= ~hit
    idx = np.flatnonzero(go)
    keys, tag, pos = keys[idx], tag[idx], _next(pos[idx], n)
    while idx.size:
        s = slots[pos]
        row = s & mask
        hit = (s >= 0) & ((s & ~mask) == tag)
        hit &= row_key[np.where(hit, row, 0)] == keys
        out[idx[hit]] = row[hit] if rows else pos[hit]
        go = (s != EMPTY) & ~hit
        idx, keys, tag, pos = idx[go], keys[go], tag[go], _next(pos[go], n)
    return out


def insert(
    slots: np.ndarray,
    row_key: np.ndarray,
    keys: np.ndarray,
    rows: np.ndarray,
    nat: Any,
    rbits: int,
) -> int:
    """Insert distinct uint64 keys known to be absent at ``rows``; returns tombstones reused."""
    if nat is not None:
        return int(
            nat.insert(
                torch.from_numpy(slots),
                torch.from_numpy(row_key.view(np.int64)),
                torch.from_numpy(np.ascontiguousarray(keys).view(np.int64)),
                torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64)),
                rbits,
            )
        )
    row_key[rows] = keys
    n = len(slots)
    pos = home(keys, n)
    rows32 = rows.astype(np.int32) | tags(keys, rbits)  # distinct rows: distinct values
    reused = 0
    while rows32.size:
        s = slots[pos]
        open_ = s < 0
        p, r = pos[open_], rows32[open_]
        slots[p] = r  # several keys may race for one slot: the last write wins
        won = np.zeros(len(rows32), bool)
        won[open_] = slots[p] == r
        reused += int(np.count_nonzero(s[won] == TOMB))
        go = ~won
        rows32, keys, pos = rows32[go], keys[go], _next(pos[go], n)
    return reused
