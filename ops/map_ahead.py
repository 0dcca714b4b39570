"""Mapping ahead: the next batch's ids looked up in the background while this batch trains.

A training step of the hashed engine first maps its ids to rows (:func:`recis.ops.id_mapper.
map_many`), and most of that time, on a warm stream where nearly every id is known, is the
hash-table probe. :func:`probe_many` does that probe read-only (nothing inserted, nothing
marked seen), so it can run for batch N+1 on another core while batch N's dense work runs
(or while the GPU runs it): nothing else changes the tables then. When batch N+1 is mapped,
the keys the probe found are only marked seen; the others (new ids, and every key of a
table that changed since) are looked up and inserted as usual. The rows, the mapper's
state and every later step are therefore exactly those of mapping without the probe.

:class:`MapAhead` holds the one probe in flight of a collection: ``start`` after a
training step's own mapping, ``take`` at the next one. It runs on one background thread
per process (created on first use, again in a forked child) and is dropped, not copied,
when its module is deep-copied or pickled.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .id_mapper import IdMapper, _as_keys

__all__ = ["MapAhead", "Probe", "probe_many"]


@dataclass
class Probe:
    """Rows that :func:`probe_many` found for some ids (``rows[i]``: int64, -1 where
    absent) and the mappers' :attr:`IdMapper.version` when it started."""

    rows: list[np.ndarray]
    versions: list[int]

    def hints(self, mappers: list[IdMapper]) -> list[np.ndarray | None]:
        """Per mapper, the rows found if it has not changed since, else None."""
        return [r if m.version == v else None for m, r, v in zip(mappers, self.rows, self.versions)]


def probe_many(mappers: list[IdMapper], ids: list[torch.Tensor | np.ndarray]) -> Probe | None:
    """A read-only look-up of ``ids[i]`` in ``mappers[i]`` on the calling thread alone (the
    GIL released): nothing is inserted or marked seen. Its :meth:`Probe.hints` handed to
    :func:`~recis.ops.id_mapper.map_many`: the keys found are only marked seen, not looked
    up again; a mapper changed in between (its version moved) gets no hints and is looked
    up afresh, so the result is always ``map_many``'s without a probe. The caller must not
    change the mappers while this runs. None without the native kernels.
    """
    nat = mappers[0]._nat if mappers else None
    if nat is None or not all(m.native for m in mappers):
        return None
    versions = [m.version for m in mappers]  # before reading anything
    keys = [torch.from_numpy(_as_keys(x, m.name).view(np.int64)) for m, x in zip(mappers, ids)]
    rows = nat.find_many(
        [torch.from_numpy(m.slots) for m in mappers],
        [torch.from_numpy(m.row_key.view(np.int64)) for m in mappers],
        keys,
        [m.rbits for m in mappers],
    )
    return Probe([r.numpy() for r in rows], versions)


_pool: tuple[int, ThreadPoolExecutor] | None = None  # (pid, the process's probe thread)
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    """The process's one probe thread (a forked child makes its own: threads do not fork)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():
            _pool = (os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="recis-map-ahead"))
        return _pool[1]


class MapAhead:
    """The probe in flight of one collection: for which tables and ids, and its result.

    Example::

        ahead = MapAhead()
        ahead.start(kjt_next, {"user": ids}, {"user": mapper})  # after this step's mapping
        ...                                                    # this step's dense work
        probe = ahead.take({"user": ids})  # before the next mapping: a Probe, or None
        map_many([mapper], [ids], step, hints=probe.hints([mapper]) if probe else None)
    """

    def __init__(self) -> None:
        self._source: Any = None  # what the ids were taken from (the next batch's KJT)
        self._ids: dict[str, torch.Tensor] = {}
        self._tables: list[str] = []
        self._future: Future[Probe | None] | None = None
        self.taken = 0  # probes handed to a mapping (for tests and logs)

    def start(
        self, source: Any, ids: dict[str, torch.Tensor], mappers: dict[str, IdMapper]
    ) -> None:
        """Probe ``ids`` (``{table: int64 [N]}``) in ``mappers`` in the background."""
        self.settle()
        self._source, self._ids, self._tables = source, ids, list(ids)
        ms = [mappers[t] for t in self._tables]
        self._future = _executor().submit(probe_many, ms, [ids[t] for t in self._tables])

    def ids_for(self, source: Any) -> dict[str, torch.Tensor] | None:
        """The ids probed when ``source`` is the object they were taken from, else None."""
        return self._ids if self._future is not None and source is self._source else None

    def take(self, ids: dict[str, torch.Tensor]) -> Probe | None:
        """The finished probe, when it was of exactly these ids (``{table: [N]}``, the same
        tables); None otherwise. Either way nothing stays in flight."""
        future, probed = self._future, self._ids
        self.settle()
        self._future, self._source, self._ids = None, None, {}
        if future is None or list(ids) != self._tables:
            return None
        same = all(
            ids[t] is probed[t]
            or (ids[t].shape == probed[t].shape and torch.equal(ids[t].cpu(), probed[t]))
            for t in self._tables
        )
        probe = future.result() if same else None
        self.taken += probe is not None
        return probe

    def settle(self) -> None:
        """Wait for the probe in flight, if any (before anything changes the mappers)."""
        if self._future is not None:
            self._future.exception()  # waits; an error surfaces in take's result()

    def drop(self) -> None:
        """Forget the probe (waiting for it first: it reads the mappers)."""
        self.settle()
        self._future, self._source, self._ids, self._tables = None, None, {}, []

    def __deepcopy__(self, memo: dict[int, Any]) -> MapAhead:
        return MapAhead()  # a copy of the module starts with nothing in flight

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]
