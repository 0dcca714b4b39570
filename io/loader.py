"""torch DataLoader workers: each worker process reads its own shard.

:class:`ShardDataset` is an ``IterableDataset``: in each worker it builds a
:class:`~recis.io.reader.Reader` for shard ``rank * num_workers + worker``
(``torch.utils.data.get_worker_info``), so the union over ranks and workers is
the dataset, each row once. :class:`Loader` wraps the DataLoader and keeps one
reader position per worker, so its ``state_dict`` resumes exactly, in the same
batch order (DataLoader collects from workers round-robin; the resumed loader
rotates workers so the next batch comes from the worker that was next).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from recis.features import Schema

from .batch import Batch
from .reader import Reader


def _identity(item: Any) -> Any:
    return item


class ShardDataset(IterableDataset):
    """Yields ``(worker, state_after, batch)`` from this worker's shard.

    Args:
        reader_args: :class:`Reader` arguments (paths, schema, batch_size, ...).
        num_workers: DataLoader workers per rank.
        states: per logical worker, a reader state to resume from (or None).
        rotate: DataLoader worker ``w`` serves logical worker ``(w + rotate) % num_workers``.
    """

    def __init__(
        self,
        reader_args: dict[str, Any],
        num_workers: int,
        states: list[dict[str, Any] | None],
        rotate: int = 0,
        epoch: int = 0,
    ) -> None:
        self.args = reader_args
        self.num_workers = num_workers
        self.states = states
        self.rotate = rotate
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, dict[str, Any], Batch]]:
        info = get_worker_info()
        w = ((info.id if info is not None else 0) + self.rotate) % self.num_workers
        reader = Reader(**self.args, worker=w, num_workers=self.num_workers, prefetch=0)
        state = self.states[w]
        if state is not None:
            reader.load_state_dict(state)
        else:
            reader.set_epoch(self.epoch)
        for batch in reader:
            yield w, reader.state_dict(), batch


class Loader:
    """Batches from ``num_workers`` DataLoader worker processes; re-iterable per epoch.

    Args:
        paths, schema, batch_size: as :class:`Reader`.
        num_workers: worker processes per rank (each reads shard
            ``rank * num_workers + worker`` of ``world_size * num_workers``).
        **reader_kwargs: other :class:`Reader` arguments (format, shuffle, seed,
            rank, world_size, ...). ``prefetch`` is the DataLoader prefetch factor.
    """

    def __init__(
        self,
        paths: str | os.PathLike | list,
        schema: Schema,
        batch_size: int,
        num_workers: int = 2,
        **reader_kwargs: Any,
    ) -> None:
        self.prefetch = max(1, int(reader_kwargs.pop("prefetch", 2)))
        # pinning happens in the DataLoader's pin thread of this process (not in the workers)
        self.pin = bool(reader_kwargs.pop("pin_memory", False)) and torch.accelerator.is_available()
        self.args = {"paths": paths, "schema": schema, "batch_size": batch_size, **reader_kwargs}
        self.num_workers = num_workers
        # one reader here validates paths and metadata early and answers __len__
        self._probe = Reader(**self.args, worker=0, num_workers=num_workers, prefetch=0)
        self._states: list[dict[str, Any] | None] = [None] * num_workers
        self._next = 0
        self._epoch = 0
        self._skipped = 0
        self._bad: Counter = Counter()
        self._last_epoch_bad: dict[str, int] = {}

    def __iter__(self) -> Iterator[Batch]:
        dataset = ShardDataset(
            self.args, self.num_workers, list(self._states), self._next, self._epoch
        )
        loader = DataLoader(
            dataset,
            batch_size=None,
            num_workers=self.num_workers,
            collate_fn=_identity,
            prefetch_factor=self.prefetch,
            pin_memory=self.pin,
        )
        for w, state, batch in loader:
            self._states[w] = state
            self._next = (w + 1) % self.num_workers
            yield batch
        # every worker finished its shard: all of them start the next epoch
        self._epoch += 1
        self._skipped += sum(s["skipped"] for s in self._states if s)
        last: Counter = Counter()
        for s in self._states:
            self._bad.update(s.get("bad", {}) if s else {})
            last.update(s.get("epoch_bad", {}) if s else {})
        self._last_epoch_bad = dict(last)
        self._states = [None] * self.num_workers
        self._next = 0

    def __len__(self) -> int:
        """Batches per epoch over all workers of this rank (exact when no row is skipped)."""
        total = 0
        for w in range(self.num_workers):
            r = Reader(**self.args, worker=w, num_workers=self.num_workers, prefetch=0)
            total += len(r)
        return total

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def skipped(self) -> int:
        """Rows dropped by ``on_bad_row="skip"`` (finished epochs and the current one)."""
        return self._skipped + sum(s["skipped"] for s in self._states if s)

    def bad_rows_report(self) -> dict[str, int]:
        """Rows skipped so far per reason, over all workers (see :meth:`Reader.bad_rows_report`)."""
        total = Counter(self._bad)
        for s in self._states:
            total.update(s.get("bad", {}) if s else {})
        return dict(total)

    def last_epoch_bad_rows(self) -> dict[str, int]:
        """Rows skipped per reason in the last finished epoch, over all workers (rows skipped
        after a worker's last batch are not in its reported state)."""
        return dict(self._last_epoch_bad)

    def state_dict(self) -> dict[str, Any]:
        """Per-worker reader positions and which worker delivers next (small, picklable)."""
        return {
            "workers": list(self._states),
            "next": self._next,
            "epoch": self._epoch,
            "skipped": self._skipped,
            "bad": dict(self._bad),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["workers"]) != self.num_workers:
            from recis.errors import DataError

            raise DataError(
                f"loader state has {len(state['workers'])} workers, this loader {self.num_workers}"
            )
        self._states = list(state["workers"])
        self._next = int(state["next"])
        self._epoch = int(state["epoch"])
        self._skipped = int(state["skipped"])
        self._bad = Counter({str(k): int(v) for k, v in state.get("bad", {}).items()})
