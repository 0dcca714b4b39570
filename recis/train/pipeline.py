"""The training pipeline: batches for the trainer's loop, one batch read ahead when the model
can start work on it early.

Like torchrec's ``TrainPipeline``, the pipeline owns everything between the reader and the
model's forward: moving batches to the device, reading the next batch while this one
trains, running the model's *ahead stage* on it (:class:`PreparesAhead`: the sharded hashed
engine sends batch N+1's ids to the ranks that own them while batch N's dense work runs),
and keeping the reader's position after the last batch trained on (not after the one read
ahead), so that a checkpoint resumes at the right row. The trainer owns the loop (forward,
backward, optimizer, evaluation, callbacks, checkpoints) and asks the pipeline for batches.

What the pipeline needs from the data is a set of small Protocols: :class:`ResumableData`
(position), :class:`BadRowCounts` (rows the reader skipped) and :class:`EpochRestart`; a plain
list of batches has none of them and trains all the same.
"""

from __future__ import annotations

import copy
from collections.abc import Generator, Iterable, Iterator, Sized
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recis.io.batch import Batch
from recis.io.loader import Loader
from recis.ops.cores import processes_on_node, usable_cores


@runtime_checkable
class PreparesAhead(Protocol):
    """A model part with work to start on the next batch while this batch trains.

    The pipeline calls ``prefetch(next_batch.sparse)`` right after moving batch N+1 to the
    device and before batch N's forward; the module's next ``lookup`` of those features
    then finds the work done (ids already routed, rows already mapped). Modules whose
    ``sends_ahead`` is False are never called, and without any such module the pipeline
    reads no batch ahead. :class:`~recis.embedding.collection.LookupModule` has the no-op
    default; the sharded hashed engine starts its id exchange here.
    """

    @property
    def sends_ahead(self) -> bool:
        """Whether :meth:`prefetch` has work to start (checked once, when the pipeline is built)."""
        ...

    def prefetch(self, kjt: KeyedJaggedTensor) -> bool:
        """Start the ahead stage for ``kjt`` (``F`` keys, batch ``B``); False: nothing to do."""
        ...


@runtime_checkable
class ResumableData(Protocol):
    """Data whose position is checkpointed: exact resume at the batch after the last trained."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class BadRowCounts(Protocol):
    """Data that counts the rows it skipped (``on_bad_row: skip``), per reason."""

    def bad_rows_report(self) -> dict[str, int]: ...

    def last_epoch_bad_rows(self) -> dict[str, int]: ...


@runtime_checkable
class EpochRestart(Protocol):
    """Data that can start an epoch from its first batch (a reader)."""

    def set_epoch(self, epoch: int) -> None: ...


@runtime_checkable
class MapsAhead(Protocol):
    """A model part that can map the next batch's ids ahead (the hashed collection's
    ``map_ahead``); :func:`set_map_ahead` turns it on before the pipeline is built."""

    map_ahead: bool


def wants_map_ahead(mode: str, device: torch.device) -> bool:
    """``train.map_ahead`` resolved: ``on`` / ``off``, or for ``auto`` whether a core is
    free for the background look-up: on a GPU (the host idles while it runs the step) or
    when torch's pool is smaller than this process's share of the cores it may use (the
    run's processes on this node share them)."""
    if mode != "auto":
        return mode == "on"
    share = usable_cores() // (processes_on_node() or 1)
    return device.type != "cpu" or torch.get_num_threads() < share


def set_map_ahead(model: nn.Module, on: bool) -> None:
    """Set ``map_ahead`` on each of the model's :class:`MapsAhead` parts."""
    for m in model.modules():
        if isinstance(m, MapsAhead):
            m.map_ahead = on


def ahead_stages(model: nn.Module) -> list[PreparesAhead]:
    """The model's modules with an ahead stage to run (``sends_ahead``), in module order."""
    return [m for m in model.modules() if isinstance(m, PreparesAhead) and m.sends_ahead]


class TrainPipeline:
    """Training batches of one process, on ``device``, with the model's ahead stage of batch
    N+1 started during step N.

    Args:
        data: batches (``B`` rows each), re-iterated each epoch: a recis reader or loader,
            or any iterable of :class:`~recis.io.Batch`.
        model: the model trained; its :class:`PreparesAhead` modules are the ahead stage.
        device: where batches are moved.

    Example::

        pipeline = TrainPipeline(reader, model, torch.device("cpu"))
        for batch, upcoming in pipeline.epoch():
            on_device = pipeline.prepare(batch, upcoming)  # upcoming's ids leave now
            loss = model(on_device)
    """

    def __init__(self, data: Iterable[Batch], model: nn.Module, device: torch.device) -> None:
        self.data = data
        self.device = device
        self.stages = ahead_stages(model)
        self._ahead: tuple[Batch, Batch] | None = None  # (next batch, on the device)
        self._position: dict[str, Any] | None = None  # the reader's, after the batch training

    # ---- batches ---------------------------------------------------------------------
    def _source(self) -> Iterator[Batch]:
        """One epoch of the data (the distributed pipeline: the same count on every rank)."""
        return iter(self.data)

    def epoch(self) -> Generator[tuple[Batch, Batch | None], None, None]:
        """One epoch's batches, each with the one after it when the model has an ahead stage
        (None otherwise, and after the last). Reading a batch ahead moves the reader, so its
        position after each batch is kept for :meth:`position`; closing the iterator early
        (the run stops mid-epoch) gives the batch read ahead back to the reader."""
        it = self._source()
        if not self.stages:
            for each in it:
                yield each, None
            return
        reader = self.data if isinstance(self.data, ResumableData) else None

        def position() -> dict[str, Any] | None:
            return copy.deepcopy(reader.state_dict()) if reader is not None else None

        batch: Batch | None = next(it, None)
        at = position()
        try:
            while batch is not None:
                upcoming = next(it, None)
                after = position()
                self._position = at
                yield batch, upcoming
                batch, at = upcoming, after
        finally:
            if batch is not None and reader is not None and self._position is not None:
                reader.load_state_dict(self._position)  # stopped early: unread the batch ahead
            self._position = None  # at the epoch's end the live position is right

    def prepare(self, batch: Batch, upcoming: Batch | None = None) -> Batch:
        """``batch`` on the device (moved during the step before when it was read ahead), with
        ``upcoming``'s ahead stage started: it runs while ``batch`` trains."""
        if self._ahead is not None and self._ahead[0] is batch:
            batch = self._ahead[1]
        else:
            batch = batch.to(self.device)
        self._ahead = None
        if upcoming is not None and self.stages:
            self._ahead = (upcoming, upcoming.to(self.device))
            for stage in self.stages:
                stage.prefetch(self._ahead[1].sparse)
        return batch

    # ---- the data's state ------------------------------------------------------------
    @property
    def resumable(self) -> bool:
        """Whether the data has a position to checkpoint."""
        return isinstance(self.data, ResumableData)

    def position(self) -> dict[str, Any] | None:
        """The reader's position after the last batch trained on (None: not resumable)."""
        if self._position is not None:
            return self._position
        return self.data.state_dict() if isinstance(self.data, ResumableData) else None

    def load_position(self, state: dict[str, Any]) -> None:
        """Continue at a position :meth:`position` gave (nothing for data without one)."""
        if isinstance(self.data, ResumableData):
            self.data.load_state_dict(state)

    def restart_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch (a checkpoint without this rank's position)."""
        if isinstance(self.data, EpochRestart):
            self.data.set_epoch(epoch)
        elif isinstance(self.data, Loader):  # no worker position is an epoch's start
            self.data.load_state_dict(
                {"workers": [None] * self.data.num_workers, "next": 0, "epoch": epoch, "skipped": 0}
            )

    def batches_per_epoch(self) -> int | None:
        """Batches in one epoch, when the data knows (for the progress bar's total)."""
        return len(self.data) if isinstance(self.data, Sized) else None

    def bad_rows_report(self) -> dict[str, int]:
        """Rows skipped so far (all epochs) per reason; ``{}`` for data that skips none."""
        return self.data.bad_rows_report() if isinstance(self.data, BadRowCounts) else {}

    def last_epoch_bad_rows(self) -> dict[str, int]:
        """Rows skipped per reason in the epoch just finished."""
        return self.data.last_epoch_bad_rows() if isinstance(self.data, BadRowCounts) else {}
