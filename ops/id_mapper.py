"""IdMapper: zero-collision map from 64-bit ids to embedding-table rows.

An open-addressing hash table (linear probing, Fibonacci hashing of the 64-bit
key) over numpy arrays; its probe loops (:mod:`recis.ops.id_mapper_probe`) run
in C++ when the torch extension builds, else vectorized in numpy. Admission,
eviction and growth are numpy array code: no Python loop over ids. Which ids are
admitted, which rows are evicted or expired and how far a table grows is
:mod:`recis.ops.id_policy`'s.

Memory per table of capacity ``C`` (the part a plain embedding table lacks):

* ``slots``: int32 ``[S]``, ``S = ceil(C / 0.9)`` (4.44 bytes/row, any count: no power-of-two
  steps); a slot holds ``tag << rbits | row`` (``>= 0``: the low ``rbits`` bits are the row,
  the bits above a tag of the key, so probes rarely read ``row_key``), ``EMPTY`` (-1) or
  ``TOMB`` (-2, a deleted entry).
* ``row_key``: int64 ``[C]``, the id stored in each row (so slots need no key).
* ``row_last``: int32 ``[C]``, step a row was last seen (only with eviction).
* ``row_count``: int32 ``[C]``, occurrences of a row (only with LFU).
* ``recycled``: int32, a stack of rows freed by eviction (short: they are
  reused at once); never-used rows are the range ``[next_unused, C)``.
* with ``min_count > 1``: a count-min sketch ``[depth, width]`` of int32.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from recis.errors import EmbeddingError, TableFullError

from . import id_mapper_probe as probe
from .id_mapper_probe import EMPTY, TOMB, native_kernels
from .id_policy import FREE, Admission, Eviction, expired, grown_capacity, victims

__all__ = ["Eviction", "IdMapper", "MapResult", "map_many", "native_kernels"]

_MAX_LOAD = 0.9  # live rows / slots, at most (tags keep long probes cheap)
_REBUILD_AT = 0.94  # (live + tombstones) / slots that triggers a rebuild


@dataclass
class MapResult:
    """What one :meth:`IdMapper.map` call did.

    ``rows``: int64 ``[N]`` row per input id, ``-1`` where the id has no row
    (not admitted, or no room). ``reset_rows``: int64 rows whose content must
    be re-initialized (evicted or expired, then possibly reused).
    ``fresh_rows`` / ``fresh_ids``: int64 rows that start a new life in this
    call (an id inserted, or an expired id seen again) and the id now in each:
    their content should be the id's initial vector.
    ``capacity``: the capacity after the call (larger than before if it grew).
    """

    rows: torch.Tensor
    reset_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    capacity: int = 0
    fresh_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    fresh_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


_NO_ROWS = np.zeros(0, np.int64)


def _num_slots(capacity: int) -> int:
    """Slots for ``capacity`` rows at load ``_MAX_LOAD`` when full: any count (the home
    slot is a multiply-shift, :func:`probe.home`), so memory grows with capacity, with
    no power-of-two steps."""
    return max(16, int(np.ceil(capacity / _MAX_LOAD)))


def _as_keys(ids: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    """int64 ids as a uint64 numpy view (no copy for CPU int64 input)."""
    if isinstance(ids, torch.Tensor):
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise EmbeddingError(f"table {name!r}: ids must be integers, got {ids.dtype}")
        ids = ids.detach().to("cpu", torch.int64).contiguous().numpy()
    arr = np.asarray(ids)
    if arr.dtype.kind not in "iu":
        raise EmbeddingError(f"table {name!r}: ids must be integers, got {arr.dtype}")
    return np.ascontiguousarray(arr.reshape(-1).astype(np.int64, copy=False)).view(np.uint64)


class IdMapper:
    """Map arbitrary int64 ids to rows ``[0, capacity)`` with no collisions.

    Args:
        capacity: rows available (initially, if ``growable``).
        name: table name, used in error messages.
        eviction: ``none``, ``lru``, ``lfu`` or ``ttl``.
        ttl_steps: for ``ttl``: a row not seen for more than this many steps expires.
        evict_fraction: fraction of ``capacity`` freed at once when eviction runs.
        min_count: occurrences before an id is admitted (count-min sketch when > 1).
        admit_prob: probability that a missing (and counted-enough) id is admitted.
        growable: double capacity instead of failing or evicting when full.
        grow_at: occupancy fraction that triggers growth.
        max_capacity: growth stops here.
        sketch_width, sketch_depth: count-min sketch shape.
        seed: seed of the admission coin.
        native: use the C++ probe loops (None: when they build; False: numpy only).

    Example::

        m = IdMapper(1000, name="user", eviction="lru")
        res = m.map(torch.tensor([7, -3, 2**62, 7]), step=1)
        res.rows  # tensor([0, 1, 2, 0])
    """

    def __init__(
        self,
        capacity: int,
        name: str = "table",
        eviction: Eviction = "none",
        ttl_steps: int | None = None,
        evict_fraction: float = 0.01,
        min_count: int = 1,
        admit_prob: float = 1.0,
        growable: bool = False,
        grow_at: float = 0.9,
        max_capacity: int | None = None,
        sketch_width: int = 1 << 20,
        sketch_depth: int = 4,
        seed: int = 0,
        native: bool | None = None,
    ) -> None:
        if capacity <= 0:
            raise EmbeddingError(f"table {name!r}: capacity must be > 0, got {capacity}")
        if eviction == "ttl" and not ttl_steps:
            raise EmbeddingError(f"table {name!r}: eviction 'ttl' needs ttl_steps > 0")
        self.name = name
        self.eviction = eviction
        self.ttl_steps = ttl_steps
        self.evict_fraction = evict_fraction
        self.growable = growable
        self.grow_at = grow_at
        self.max_capacity = max_capacity
        self.admission = Admission(min_count, admit_prob, seed, sketch_width, sketch_depth)
        self._nat = native_kernels() if native in (None, True) else None
        if native and self._nat is None:
            raise EmbeddingError(f"table {name!r}: native IdMapper kernels could not be built")
        self.version = 0  # goes up whenever an id's row may change (recis.ops.map_ahead)
        self._allocate(capacity)

    # ------------------------------------------------------------------ storage
    def _allocate(self, capacity: int) -> None:
        self.capacity = capacity
        self.row_key = np.zeros(capacity, np.uint64)
        self.row_last = np.full(capacity, FREE, np.int32) if self.eviction != "none" else None
        self.row_count = np.zeros(capacity, np.int32) if self.eviction == "lfu" else None
        self.next_unused = 0  # rows >= this were never used
        self.recycled = np.zeros(0, np.int32)  # rows freed by eviction, reused first
        self._set_slots(_num_slots(capacity))

    def _set_slots(self, n: int) -> None:
        self.version += 1
        self.slots = np.full(n, EMPTY, np.int32)
        self.rbits = probe.row_bits(self.capacity)  # slot = tag << rbits | row
        self.n_tomb = 0

    @property
    def native(self) -> bool:
        """Whether the C++ probe loops run this mapper."""
        return self._nat is not None

    @property
    def size(self) -> int:
        """Rows in use."""
        return self.capacity - self.n_free

    @property
    def n_free(self) -> int:
        """Rows free: never used plus recycled."""
        return self.capacity - self.next_unused + len(self.recycled)

    def live_rows(self) -> np.ndarray:
        """Rows in use, ascending, int64 ``[size]``."""
        live = np.ones(self.capacity, bool)
        live[self.next_unused :] = False
        live[self.recycled] = False
        return np.flatnonzero(live)

    def _find(self, keys: np.ndarray, rows: bool = False, touch: int | None = None) -> np.ndarray:
        """Slot (or row) of each uint64 key, -1 where absent; see :func:`probe.find`."""
        return probe.find(
            self.slots, self.row_key, keys, self._nat, self.rbits, rows, self.row_last, touch
        )

    def _insert(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """Insert distinct keys known to be absent, at ``rows``."""
        self.version += 1
        self.n_tomb -= probe.insert(self.slots, self.row_key, keys, rows, self._nat, self.rbits)

    def _rebuild(self, n_slots: int | None = None) -> None:
        live = self.live_rows()
        self._set_slots(n_slots or len(self.slots))
        self._insert(self.row_key[live], live)

    # ------------------------------------------------------------------ public
    def lookup(self, ids: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Rows of ``ids`` (int64 ``[N]``), ``-1`` where unknown; changes nothing."""
        return torch.from_numpy(self._find(_as_keys(ids, self.name), rows=True))

    def map(
        self,
        ids: torch.Tensor | np.ndarray,
        step: int,
        insert: bool = True,
        counts: torch.Tensor | np.ndarray | None = None,
    ) -> MapResult:
        """Rows of ``ids`` (int64 ``[N]``), inserting admitted new ids when ``insert``.

        ``step`` is the caller's training step (for LRU/TTL); rows used here
        are marked seen at ``step`` and are not evicted by this call.
        ``counts`` (int ``[N]``, default all 1): occurrences each entry of
        ``ids`` stands for, when the caller deduplicated them (admission and
        LFU count occurrences, so a deduplicated batch with its counts maps
        exactly like the batch itself). New ids take free rows in the order
        they first occur in ``ids`` (mapping them one by one gives the same rows).
        """
        keys = _as_keys(ids, self.name)
        occ = self._occurrences(keys, counts)
        if insert and self._native_applies(len(keys)):
            return map_many([self], [keys], step, [occ])[0]
        # LRU/LFU: the native probe marks hits as seen at once (TTL must check expiry first)
        touch = (
            step if insert and self._nat is not None and self.eviction in ("lru", "lfu") else None
        )
        rows = self._find(keys, rows=True, touch=touch)
        if not insert:
            return MapResult(torch.from_numpy(rows), capacity=self.capacity)
        reset = [np.zeros(0, np.int64)]
        fresh = [np.zeros(0, np.int64)]
        hit = rows >= 0
        if self.eviction == "ttl":  # not seen for too long: same row, fresh content
            assert self.row_last is not None  # TTL tables keep row_last
            reset.append(expired(self.row_last, rows[hit], step, self.ttl_steps))
            fresh.append(reset[-1])
        if self.row_last is not None and touch is None:
            self.row_last[rows[hit]] = step
        new_rows = np.zeros(0, np.int64)
        missing = ~hit
        if missing.any():
            new_rows = self._insert_missing(keys, rows, missing, occ, step, reset)
            fresh.append(new_rows)
        return self._finish(rows, occ, new_rows, np.concatenate(fresh), np.concatenate(reset))

    def _occurrences(
        self, keys: np.ndarray, counts: torch.Tensor | np.ndarray | None
    ) -> np.ndarray | None:
        if counts is None:
            return None
        if isinstance(counts, torch.Tensor):
            counts = counts.cpu().numpy()
        occ = np.asarray(counts, dtype=np.int64).reshape(-1)
        if len(occ) != len(keys):
            raise EmbeddingError(f"table {self.name!r}: {len(occ)} counts for {len(keys)} ids")
        return occ

    def _insert_missing(
        self,
        keys: np.ndarray,
        rows: np.ndarray,
        missing: np.ndarray,
        occ: np.ndarray | None,
        step: int,
        reset: list[np.ndarray],
    ) -> np.ndarray:
        """numpy path: admit the ``missing`` keys, give them rows in first-seen order
        (writing ``rows`` in place); returns the rows given."""
        new_keys, inverse, admit = self.admission.admit_missing(
            keys[missing], None if occ is None else occ[missing]
        )
        new_keys = new_keys[admit]
        if not len(new_keys):
            return np.zeros(0, np.int64)
        new_rows = self._take_rows(len(new_keys), step, reset)
        n = len(new_rows)
        self._insert(new_keys[:n], new_rows)
        if self.row_last is not None:
            self.row_last[new_rows] = step
        got = np.full(len(admit), -1, np.int64)
        got[np.flatnonzero(admit)[:n]] = new_rows
        rows[missing] = got[inverse]
        return new_rows

    def _finish(
        self,
        rows: np.ndarray,
        occ: np.ndarray | None,
        new_rows: np.ndarray,
        fresh_rows: np.ndarray,
        reset_rows: np.ndarray,
    ) -> MapResult:
        """The tail every insert path shares: LFU counts, rebuild, growth, the result.

        ``new_rows``: rows given to inserted ids (their LFU count restarts);
        ``fresh_rows``: those and the rows of expired ids seen again."""
        if self.row_count is not None:
            self.row_count[new_rows] = 0
            valid = rows >= 0
            np.add.at(self.row_count, rows[valid], 1 if occ is None else occ[valid])
        if self.size + self.n_tomb > _REBUILD_AT * len(self.slots):
            self._rebuild()
        if self.growable and self.size > self.grow_at * self.capacity:
            self._grow(self.capacity + 1)
        return MapResult(
            torch.from_numpy(rows),
            reset_rows,
            self.capacity,
            fresh_rows,
            self.row_key[fresh_rows].view(np.int64),
        )

    def _native_applies(self, n: int) -> bool:
        """Whether one native find-or-insert pass maps ``n`` ids: no admission rules
        (``min_count`` 1, ``admit_prob`` 1), no TTL (hits must be checked for expiry)
        and free rows for every id (no eviction or growth can be needed mid-batch)."""
        return (
            self._nat is not None
            and self.admission.admits_all
            and self.eviction != "ttl"
            and n <= self.n_free
        )

    def _native_args(self, keys: np.ndarray) -> tuple[Any, ...]:
        """This table's arguments of the native ``find_or_insert_many``, per list."""
        return (
            torch.from_numpy(self.slots),
            torch.from_numpy(self.row_key.view(np.int64)),
            torch.from_numpy(keys.view(np.int64)),
            torch.from_numpy(self.row_last) if self.row_last is not None else probe.EMPTY_I32,
            torch.from_numpy(self.recycled),
            self.next_unused,
            self.n_free,
            self.rbits,
        )

    def _took(self, taken: int, reused: int) -> np.ndarray:
        """Account for ``taken`` free rows given by the native pass; returns them."""
        self.version += 1
        self.n_tomb -= reused
        used = min(taken, len(self.recycled))
        rows = np.concatenate(
            [
                self.recycled[:used].astype(np.int64),
                np.arange(self.next_unused, self.next_unused + taken - used, dtype=np.int64),
            ]
        )
        self.recycled = self.recycled[used:]
        self.next_unused += taken - used
        return rows

    def _take_rows(self, n: int, step: int, reset: list[np.ndarray]) -> np.ndarray:
        """Pop ``n`` free rows, growing or evicting first; may return fewer."""
        if n > self.n_free and self.growable:
            self._grow(self.size + n)
        if n > self.n_free and self.eviction != "none":
            freed = self._evict(
                max(n - self.n_free, int(self.evict_fraction * self.capacity)), step
            )
            reset.append(freed)
        if n > self.n_free and self.eviction == "none":
            raise TableFullError(
                f"table {self.name!r} is full: {self.size} of {self.capacity} rows in use, "
                f"{n} new ids need rows; "
                "raise capacity or set eviction (lru|lfu|ttl) or growable: true"
            )
        n = min(n, self.n_free)
        k = min(n, len(self.recycled))
        fresh = np.arange(self.next_unused, self.next_unused + n - k, dtype=np.int64)
        rows = np.concatenate([self.recycled[:k].astype(np.int64), fresh])
        self.recycled = self.recycled[k:]
        self.next_unused += n - k
        return rows

    def _evict(self, k: int, step: int) -> np.ndarray:
        """Free up to ``k`` rows chosen by :func:`recis.ops.id_policy.victims`; returns them."""
        last = self.row_last
        assert last is not None  # evicting tables keep row_last
        rows = victims(self.eviction, last, self.row_count, k, step, self.ttl_steps)
        if len(rows) == 0:
            return rows
        self.version += 1
        pos = self._find(self.row_key[rows])
        self.slots[pos] = TOMB
        self.n_tomb += len(rows)
        last[rows] = FREE
        self.recycled = np.concatenate([self.recycled, rows.astype(np.int32)])
        return rows

    def _grow(self, need: int) -> None:
        new = grown_capacity(self.capacity, need, self.max_capacity)
        if new <= self.capacity:
            return
        old = self.capacity
        self.capacity = new
        self.row_key = np.concatenate([self.row_key, np.zeros(new - old, np.uint64)])
        if self.row_last is not None:
            self.row_last = np.concatenate([self.row_last, np.full(new - old, FREE, np.int32)])
        if self.row_count is not None:
            self.row_count = np.concatenate([self.row_count, np.zeros(new - old, np.int32)])
        self._rebuild(_num_slots(new))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Tensors and numbers that fully restore the mapper."""
        st: dict[str, Any] = {
            "capacity": self.capacity,
            "next_unused": self.next_unused,
            "row_key": torch.from_numpy(self.row_key.view(np.int64).copy()),
            "recycled": torch.from_numpy(self.recycled.astype(np.int64)),
            "rng": self.admission.rng.bit_generator.state,
        }
        if self.row_last is not None:
            st["row_last"] = torch.from_numpy(self.row_last.copy())
        if self.row_count is not None:
            st["row_count"] = torch.from_numpy(self.row_count.copy())
        if self.admission.sketch is not None:
            st["sketch"] = torch.from_numpy(self.admission.sketch.copy())
        return st

    def load_state_dict(self, st: dict[str, Any]) -> None:
        self._allocate(int(st["capacity"]))
        self.row_key[:] = st["row_key"].numpy().view(np.uint64)
        self.next_unused = int(st["next_unused"])
        self.recycled = st["recycled"].numpy().astype(np.int32)
        if self.row_last is not None:
            self.row_last[:] = st["row_last"].numpy()
        if self.row_count is not None:
            self.row_count[:] = st["row_count"].numpy()
        if self.admission.sketch is not None and "sketch" in st:
            self.admission.sketch[...] = st["sketch"].numpy()
        self.admission.rng.bit_generator.state = st["rng"]
        self._rebuild()

    def clear(self) -> None:
        """Forget every id (capacity, sketch and settings stay)."""
        self._allocate(self.capacity)

    def insert_items(
        self,
        ids: torch.Tensor | np.ndarray,
        last: np.ndarray | None = None,
        count: np.ndarray | None = None,
    ) -> np.ndarray:
        """Give distinct ``ids`` absent from the mapper rows, with their last-seen steps and
        LFU counts (a checkpoint being loaded); returns their rows, int64 ``[N]``.

        Growable mappers grow to fit; otherwise, with eviction, the rows seen longest ago
        are left out (row ``-1``) when there is not room for all; without eviction a
        :class:`TableFullError` names the table.
        """
        keys = _as_keys(ids, self.name)
        out = np.full(len(keys), -1, np.int64)
        if len(keys) > self.n_free and self.growable:
            self._grow(self.size + len(keys))
        keep = np.arange(len(keys))
        if len(keys) > self.n_free:
            if self.eviction == "none":
                raise TableFullError(
                    f"table {self.name!r}: {len(keys)} ids to load, {self.n_free} free rows; "
                    "raise capacity or set eviction (lru|lfu|ttl) or growable: true"
                )
            order = np.argsort(-last if last is not None else np.zeros(len(keys)), kind="stable")
            keep = np.sort(order[: self.n_free])
        rows = self._take_rows(len(keep), 0, [])
        self._insert(keys[keep], rows)
        if self.row_last is not None:
            self.row_last[rows] = 0 if last is None else last[keep]
        if self.row_count is not None and count is not None:
            self.row_count[rows] = count[keep]
        out[keep] = rows
        return out

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 ``[size]``, rows int64 ``[size]``) of every live row, by row."""
        live = self.live_rows()
        return self.row_key[live].view(np.int64), live


def map_many(
    mappers: list[IdMapper],
    ids: list[torch.Tensor | np.ndarray],
    step: int,
    counts: list[torch.Tensor | np.ndarray | None] | None = None,
    hints: list[np.ndarray | None] | None = None,
) -> list[MapResult]:
    """``[m.map(x, step, counts=c) for m, x, c in ...]`` with one native call for every
    mapper that needs nothing but free rows (see :meth:`IdMapper._native_applies`).

    The native call runs the tables as a few large parallel tasks (whole tables per
    thread) instead of a parallel region per table: on a busy machine each region
    waits for its slowest thread. Results equal the one-by-one calls'. ``hints``: per
    mapper, None or the rows of its ids found ahead (int64, -1: not found) on the table
    as it is now (:meth:`recis.ops.map_ahead.Probe.hints`): only the others are looked up.
    """
    counts = counts or [None] * len(mappers)
    hints = hints or [None] * len(mappers)
    keys = [_as_keys(x, m.name) for m, x in zip(mappers, ids)]
    occ = [m._occurrences(k, c) for m, k, c in zip(mappers, keys, counts)]
    fast = [i for i, (m, k) in enumerate(zip(mappers, keys)) if m._native_applies(len(k))]
    out: list[MapResult | None] = [None] * len(mappers)
    if fast:
        args = list(zip(*(mappers[i]._native_args(keys[i]) for i in fast)))
        nat = mappers[fast[0]]._nat
        assert nat is not None  # _native_applies checked it
        found = [_hint(hints[i]) for i in fast]
        rows, taken, reused = nat.find_or_insert_many(*args[:4], step, *args[4:], found)
        for i, r, t, u in zip(fast, rows, taken, reused):
            new_rows = mappers[i]._took(t, u)
            out[i] = mappers[i]._finish(r.numpy(), occ[i], new_rows, new_rows, _NO_ROWS)
    for i, m in enumerate(mappers):
        if out[i] is None:
            out[i] = m.map(keys[i], step, counts=occ[i])
    return [r for r in out if r is not None]


def _hint(rows: np.ndarray | None) -> torch.Tensor:
    """A probe's rows for the native call (empty: look every key up; the call checks that
    there is one per key)."""
    return probe.EMPTY_I64 if rows is None else torch.from_numpy(rows)
