"""Admission and eviction policy of :class:`recis.ops.id_mapper.IdMapper`: which missing ids
get a row, and which rows are freed when a table is full. numpy array code, no Python loop
over ids; the mapper owns the rows and slots, this module only decides.

Admission (:class:`Admission`): a missing id is *admitted* (gets a row) once it was seen
``min_count`` times, counted by a count-min sketch (it can only over-count, so an id may be
admitted early after sketch collisions, never late), and then with probability
``admit_prob`` (one draw per id per step it is missing).

Eviction (:func:`victims`, when the table is full): ``lru`` frees the rows seen longest ago,
``lfu`` the rows seen least often, ``ttl`` the rows not seen for more than ``ttl_steps``
steps (a known id past its TTL is also treated as new on its next lookup: its row is
reset). Rows used in the current batch are never evicted. To amortize the ``O(C)`` scan,
one eviction frees ``max(needed, evict_fraction * C)`` rows. Ids still without a row read
the fallback (row ``-1`` in the mapper).

Growth (:func:`grown_capacity`): a growable mapper doubles ``C`` (up to ``max_capacity``)
when occupancy passes ``grow_at`` or a batch needs more rows than are free; rows keep their
index, so weights and optimizer state are only copied.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Eviction = Literal["none", "lru", "lfu", "ttl"]

FREE = np.int32(np.iinfo(np.int32).max)  # row_last of a free row: never evictable

_SKETCH_MUL = np.array(
    [0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD,
     0xC4CEB9FE1A85EC53, 0x9FB21C651E98DF25, 0x27D4EB2F165667C5, 0x94D049BB133111EB],
    dtype=np.uint64,
)  # fmt: skip


class Admission:
    """Which missing ids are given a row: a count-min sketch threshold, then a coin.

    Args:
        min_count: occurrences before an id is admitted (count-min sketch when > 1).
        admit_prob: probability that a missing (and counted-enough) id is admitted.
        seed: seed of the admission coin.
        sketch_width, sketch_depth: count-min sketch shape (width rounded down to a power
            of two); ``sketch`` is int32 ``[depth, width]``, None when ``min_count <= 1``.
    """

    def __init__(
        self,
        min_count: int = 1,
        admit_prob: float = 1.0,
        seed: int = 0,
        sketch_width: int = 1 << 20,
        sketch_depth: int = 4,
    ) -> None:
        self.min_count = min_count
        self.admit_prob = admit_prob
        self.rng = np.random.default_rng(seed)
        self.sketch = (
            np.zeros((sketch_depth, 1 << int(np.log2(sketch_width))), np.int32)
            if min_count > 1
            else None
        )

    @property
    def admits_all(self) -> bool:
        """Whether every missing id is admitted (no sketch, no coin)."""
        return self.sketch is None and self.admit_prob >= 1.0

    def admit_missing(
        self, keys: np.ndarray, occ: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Admission of a call's missing ids ``keys`` (uint64 ``[n]``, repeats allowed;
        ``occ``: int64 ``[n]`` occurrences each stands for, default 1): the distinct keys in
        first-seen order ``[u]``, each key's index among them ``[n]``, and which of the
        distinct keys are admitted, bool ``[u]``."""
        uniq, first, inverse, seen = np.unique(
            keys, return_index=True, return_inverse=True, return_counts=True
        )
        order = np.argsort(first, kind="stable")  # first-seen order, as the native path
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        distinct, inverse = uniq[order], rank[inverse.reshape(-1)]
        seen = seen[order]
        if occ is not None:
            seen = np.bincount(inverse, weights=occ, minlength=len(distinct))
        return distinct, inverse, self.admit(distinct, seen.astype(np.int64))

    def admit(self, keys: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """bool ``[n]``: which of the distinct missing uint64 ``keys`` get a row, given the
        occurrences ``counts`` int64 ``[n]`` of this call (added to the sketch)."""
        admit = np.ones(len(keys), bool)
        if self.sketch is not None:
            depth, width = self.sketch.shape
            est = None
            with np.errstate(over="ignore"):
                for d in range(depth):
                    h = ((keys ^ _SKETCH_MUL[d + 4 & 7]) * _SKETCH_MUL[d & 7]) >> np.uint64(
                        64 - int(np.log2(width))
                    )
                    h = h.astype(np.int64)
                    np.add.at(self.sketch[d], h, counts.astype(np.int32))
                    e = self.sketch[d][h]
                    est = e if est is None else np.minimum(est, e)
            assert est is not None  # depth >= 1
            admit &= est >= self.min_count
        if self.admit_prob < 1.0:
            admit &= self.rng.random(len(keys)) < self.admit_prob
        return admit


def victims(
    eviction: Eviction,
    last: np.ndarray,
    count: np.ndarray | None,
    k: int,
    step: int,
    ttl_steps: int | None,
) -> np.ndarray:
    """Rows (int64, ascending within each score) that ``eviction`` frees: up to ``k`` for
    ``lru`` / ``lfu``, every expired row for ``ttl``.

    ``last``: int32 ``[C]`` step each row was last seen (``FREE`` for a free row, so no
    list of live rows is built: one or two O(C) passes); ``count``: int32 ``[C]`` LFU
    counts (``lfu`` only).
    """
    if eviction == "ttl":
        assert ttl_steps  # the mapper refuses ttl without ttl_steps
        return np.flatnonzero(last < step - ttl_steps).astype(np.int64)
    evictable = last < step  # rows of this batch (and free rows) stay
    n = int(np.count_nonzero(evictable))
    k = min(k, n)
    if k == 0:
        return np.zeros(0, np.int64)
    if k == n:
        return np.flatnonzero(evictable).astype(np.int64)
    if eviction == "lfu":
        assert count is not None  # LFU tables keep counts
        score = np.where(evictable, count, np.iinfo(np.int32).max)
    else:
        score = last
    kth = np.partition(score, k - 1)[k - 1]  # k-th smallest score
    below = np.flatnonzero(score < kth)
    ties = np.flatnonzero(score == kth)[: k - len(below)]
    return np.concatenate([below, ties]).astype(np.int64)


def expired(last: np.ndarray, hit_rows: np.ndarray, step: int, ttl_steps: int | None) -> np.ndarray:
    """Distinct rows (int64, ascending) among ``hit_rows`` not seen for more than
    ``ttl_steps`` steps before ``step`` (``last``: int32 ``[C]`` last-seen steps)."""
    assert ttl_steps  # the mapper refuses ttl without ttl_steps
    return np.unique(hit_rows[last[hit_rows] < step - ttl_steps]).astype(np.int64)


def grown_capacity(capacity: int, need: int, max_capacity: int | None) -> int:
    """``capacity`` doubled until it holds ``need`` rows, capped at ``max_capacity``."""
    new = capacity
    while new < need:
        new *= 2
    return new if max_capacity is None else min(new, max_capacity)
