"""Readers: files -> sharded, shuffled, prefetched, resumable :class:`~recis.io.Batch` streams.

How rows flow (see ``docs/data.md``):

1. The files are split into *units* (parquet row groups, ORC/CSV files) with
   row counts from metadata (:mod:`recis.io.sources`).
2. Each epoch the units are ordered (permuted by ``[seed, epoch]`` when
   shuffling; every rank computes the same order) and their rows laid end to
   end. Shard ``s`` of ``S = world_size * num_workers`` takes the contiguous
   row range ``[N*s//S, N*(s+1)//S)``: every row belongs to exactly one shard,
   whatever the file and row-group counts, and shards differ by at most one row.
3. A shard reads its range in chunks of ``shuffle_buffer`` rows; with
   ``shuffle`` each chunk is permuted by an RNG seeded ``[seed, epoch, shard,
   chunk]``, so the RNG state is a function of the position, never data.
4. Batches of ``batch_size`` valid rows are cut from the permuted chunks, bad
   rows raised on or skipped (``on_bad_row``; skipped rows are counted per
   reason, quarantined, and limited by ``max_bad_fraction``), and converted in a
   background thread ``prefetch`` batches ahead of the consumer.

Every file's schema is checked from its metadata when the reader is built
(:func:`~recis.io.validate.check_files`), so drift in the last file stops the
run before its first step. Row numbers are 0-based data rows within a file
(a CSV header is not a row); CSV messages also give the physical line.

The position after each delivered batch is ``(epoch, chunk, pos)``: resuming
re-reads that chunk, re-permutes it identically and continues at ``pos``.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Generator, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from recis.errors import DataError
from recis.features import Schema

from .batch import Batch
from .convert import Columns, convert_columns
from .prefetch import background
from .quarantine import BAD_LINE, Quarantine, check_bad_fraction, record
from .reader_state import STATE_KEYS, STATE_VERSION, SkipTally, check_options, start_state
from .sources import SUFFIXES as _SUFFIXES
from .sources import CsvOptions, Source, Unit, as_arrow_fs, resolve_paths, window_units
from .validate import bad_rows, check_files, missing_columns


def _open_source(
    files: list[str],
    schema: Schema,
    format: str,
    fs: Any,
    csv: CsvOptions | None,
    skip: bool,
    missing_as_null: bool = False,
) -> Source:
    """The :class:`Source` over ``files`` (``skip``: leave out CSV lines that fail to parse;
    ``missing_as_null``: a column a file lacks is null in its rows)."""
    return Source(
        files,
        schema.columns,
        format,
        fs,
        csv,
        skip_bad_lines=skip,
        missing_as_null=missing_as_null,
        # CSV ids under dtype int or string are read as text, whatever a block looks like:
        # int ids are parsed (checked per row) by recis, string ids hashed as written
        # ("007" stays "007"; one file's all-digit block cannot make the column int64)
        text_columns=[f.source for f in schema.sparse if f.dtype != "auto"],
    )


class Reader:
    """Reads parquet, ORC or CSV/TSV files into batches for one shard.

    Args:
        paths: file, directory, glob or list (local, a URI, or on ``filesystem``).
        schema: which columns become which features.
        batch_size: rows per batch (only the last batch of an epoch may be shorter).
        format: ``parquet``, ``orc``, ``csv``, ``tsv`` or ``jsonl``.
        shuffle: permute unit order per epoch and rows within each buffer.
        seed: shuffle seed; the order depends only on seed, epoch and shard layout.
        rank, world_size: this process's place among the training processes
            (passed in explicitly; never read from the environment).
        worker, num_workers: this reader's place among the data-loading workers of a rank.
        shuffle_buffer: rows per shuffle chunk (also the read granularity).
        prefetch: batches converted ahead in a background thread (0: synchronous).
        nan_policy: ``fill`` or ``raise`` on null/NaN dense values.
        on_bad_row: ``raise`` (DataError naming file, column, row) or ``skip``
            (count per reason in :meth:`bad_rows_report` and append the row as JSON
            to ``quarantine``).
        quarantine: JSON-lines file for skipped rows (None: only counted).
        max_bad_fraction: with ``skip``, a DataError once the rows skipped in an epoch
            pass this fraction of the shard's rows (default 0.01); an epoch whose rows
            are all bad is an error whatever the fraction.
        csv: CSV/TSV parsing options (delimiter, header, column names, ``layout="criteo"``).
        filesystem: a pyarrow or fsspec filesystem for the paths.
        drop_last: drop the short last batch of each epoch.
        pin_memory: pin batches in the prefetch thread (fast host-to-GPU copies; no-op on CPU).
        on_missing_column: ``raise`` (DataError naming the file and column) or ``null``: a
            column some files lack (added after they were written) is null in their rows
            (dense ``fill``, no ids, a bad row for a label); a column no file has is still
            a DataError.
        window: ``(lo, hi)`` fractions: read only rows ``[floor(lo n), floor(hi n))`` of the
            files' ``n`` rows in file order (``data.holdout``: the last fraction evaluates,
            the rows before it train), before sharding and shuffling.
    """

    def __init__(
        self,
        paths: str | os.PathLike | list,
        schema: Schema,
        batch_size: int,
        *,
        format: str = "parquet",
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        worker: int = 0,
        num_workers: int = 1,
        shuffle_buffer: int = 65536,
        prefetch: int = 2,
        nan_policy: str = "fill",
        on_bad_row: str = "raise",
        quarantine: str | os.PathLike | None = None,
        csv: CsvOptions | None = None,
        filesystem: object | None = None,
        drop_last: bool = False,
        pin_memory: bool = False,
        max_bad_fraction: float = 0.01,
        on_missing_column: str = "raise",
        window: tuple[float, float] | None = None,
    ) -> None:
        check_options(dict(locals()))
        fs = as_arrow_fs(filesystem)
        self.files = resolve_paths(paths, _SUFFIXES[format], fs)
        self.schema = schema
        self.batch_size = batch_size
        self.format = format
        self.shuffle = shuffle
        self.seed = seed
        self.shard = rank * num_workers + worker
        self.num_shards = world_size * num_workers
        self.buffer = shuffle_buffer
        self.prefetch = prefetch
        self.nan_policy = nan_policy
        self.on_bad_row = on_bad_row
        self._quarantine = Quarantine(quarantine)
        self.quarantine = self._quarantine.path
        self.max_bad_fraction = float(max_bad_fraction)
        self.drop_last = drop_last
        # pinning needs an accelerator runtime; without one it is a no-op rather than an error
        self.pin = pin_memory and torch.accelerator.is_available()
        self.source = _open_source(
            self.files, schema, format, fs, csv, on_bad_row == "skip", on_missing_column == "null"
        )
        if window is not None:  # a held-out tail (data.holdout) or the rows before it
            self.source.units = window_units(self.source.units, *window)
        self.num_rows = sum(u.num_rows for u in self.source.units)
        # every file's columns and types, from metadata, before the first step
        check_files(schema, self.files, [self.source.schema(i) for i in range(len(self.files))])
        # logged by the first shard only: every rank and worker reads the same files
        self.missing_columns = missing_columns(self.files, self.source.absent, self.shard == 0)
        self._lock = threading.Lock()
        self._state = start_state(0)

    # -- position --------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning at the next iteration."""
        with self._lock:
            s = self._state
            self._state = start_state(epoch, s["skipped"], s["bad"], s["last_epoch_bad"])

    @property
    def epoch(self) -> int:
        return int(self._state["epoch"])

    @property
    def skipped(self) -> int:
        """Rows dropped by ``on_bad_row="skip"`` so far (all epochs; CSV bad lines included)."""
        return int(self._state["skipped"])

    def bad_rows_report(self) -> dict[str, int]:
        """Rows skipped so far (all epochs) per reason: ``{"column: what": count}``.

        CSV lines with the wrong number of fields count under ``"bad line"``. The
        counts are part of :meth:`state_dict`, so they survive a resume.
        """
        with self._lock:
            return dict(self._state["bad"])

    def last_epoch_bad_rows(self) -> dict[str, int]:
        """Rows skipped per reason in the last epoch whose loop completed (``{}``: none).

        For a trainer that logs each epoch's skips when its loop over the reader ends.
        """
        with self._lock:
            return dict(self._state["last_epoch_bad"])

    def _plan(self, epoch: int) -> tuple[list[Unit], np.ndarray, int, int]:
        """Units in this epoch's order, their start offsets, and this shard's row range."""
        units = list(self.source.units)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(units))
            units = [units[i] for i in order]
        starts = np.cumsum([0] + [u.num_rows for u in units])
        n = int(starts[-1])
        lo = n * self.shard // self.num_shards
        hi = n * (self.shard + 1) // self.num_shards
        return units, starts, lo, hi

    def __len__(self) -> int:
        """Batches per epoch for this shard (exact when no row is skipped)."""
        _, _, lo, hi = self._plan(self.epoch)
        n = hi - lo
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def state_dict(self) -> dict[str, Any]:
        """Where the next delivered batch starts: a small picklable dict (positions, no data).

        ``file``/``row_group``/``row`` say where the current chunk starts in the
        files; ``rng`` is the seed sequence of the chunk's permutation.
        """
        with self._lock:
            s = dict(self._state)
            for key in ("bad", "epoch_bad", "last_epoch_bad"):
                s[key] = dict(s[key])
        units, starts, lo, hi = self._plan(s["epoch"])
        g = min(lo + s["chunk"] * self.buffer, max(hi - 1, lo))
        k = max(0, int(np.searchsorted(starts, g, side="right")) - 1)
        u = units[min(k, len(units) - 1)]
        return {
            "version": STATE_VERSION,
            **s,
            "rows_in_epoch": s["chunk"] * self.buffer + s["pos"],
            "file": self.files[u.file],
            "row_group": u.part,
            "row": u.row0 + g - int(starts[k]),
            "rng": [self.seed, s["epoch"], self.shard, s["chunk"]] if self.shuffle else None,
            "layout": self._layout(),
        }

    def _layout(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "shuffle": self.shuffle,
            "shard": self.shard,
            "num_shards": self.num_shards,
            "batch_size": self.batch_size,
            "shuffle_buffer": self.buffer,
            "num_files": len(self.files),
            "num_rows": self.num_rows,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly after the last batch delivered by the reader that saved ``state``."""
        if state.get("version") not in (1, STATE_VERSION):  # 1: before per-reason counts
            raise DataError(f"reader state version {state.get('version')} is not supported")
        if state["layout"] != self._layout():
            diff = {
                k: (v, self._layout().get(k))
                for k, v in state["layout"].items()
                if self._layout().get(k) != v
            }
            raise DataError(f"reader state does not match this reader (saved, now): {diff}")
        with self._lock:
            self._state = {k: int(state.get(k, 0)) for k in STATE_KEYS}
            for k in ("bad", "epoch_bad", "last_epoch_bad"):
                self._state[k] = {str(r): int(v) for r, v in state.get(k, {}).items()}

    # -- reading ---------------------------------------------------------------------------
    def _pieces(
        self, epoch: int, pos: int
    ) -> Iterator[tuple[pa.Table, np.ndarray, np.ndarray, list[dict[str, Any]]]]:
        """This shard's rows from position ``pos``.

        Yields (table, file index [n], file row [n], bad lines): the CSV lines of a file
        that were left out of its rows come with the piece that starts the file, so the
        one shard that reads a file's first row reports them.
        """
        units, starts, lo, hi = self._plan(epoch)
        g = lo + pos
        k = int(np.searchsorted(starts, g, side="right")) - 1
        while g < hi and k < len(units):
            u = units[k]
            offset = g - int(starts[k])
            lines = self._bad_lines(u.file) if offset == 0 and u.row0 == 0 else []
            for t in self.source.read(u, offset):
                t = t.slice(0, hi - g)
                if t.num_rows:
                    r0 = u.row0 + offset
                    rows = self.source.file_rows(u.file, np.arange(r0, r0 + t.num_rows))
                    yield t, np.full(t.num_rows, u.file, np.int32), rows, lines
                    lines = []
                    g += t.num_rows
                    offset += t.num_rows
                if g >= hi:
                    return
            k += 1

    def _bad_lines(self, fidx: int) -> list[dict[str, Any]]:
        path = self.files[fidx]
        return [
            record(path, row, line, BAD_LINE, text=text)
            for row, line, text in self.source.bad_lines.get(fidx, [])
        ]

    def _chunks(
        self, epoch: int, chunk: int
    ) -> Iterator[tuple[int, pa.Table, np.ndarray, np.ndarray, list[dict[str, Any]]]]:
        """Chunks of ``shuffle_buffer`` rows from chunk ``chunk`` on.

        Yields (index, table, files, rows, bad lines met in the chunk).
        """
        parts: list[tuple[pa.Table, np.ndarray, np.ndarray]] = []
        lines: list[dict[str, Any]] = []
        have = 0
        for t, f, r, bad in self._pieces(epoch, chunk * self.buffer):
            lines += bad
            while t.num_rows:
                take = min(t.num_rows, self.buffer - have)
                parts.append((t.slice(0, take), f[:take], r[:take]))
                have += take
                t, f, r = t.slice(take), f[take:], r[take:]
                if have == self.buffer:
                    yield chunk, *self._join(parts), lines
                    chunk, parts, have, lines = chunk + 1, [], 0, []
        if parts:
            yield chunk, *self._join(parts), lines

    def _join(self, parts: list) -> tuple[pa.Table, np.ndarray, np.ndarray]:
        # types that cannot be unified were refused when the reader was built (check_files)
        table = pa.concat_tables([p[0] for p in parts], promote_options="permissive")
        return table, np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])

    def _raise_bad(self, reason: str, table: pa.Table, i: int, fidx: int, row: int) -> None:
        """DataError for the bad row ``i`` of ``table`` (row ``row`` of file ``fidx``)."""
        column, what = reason.split(": ", 1)
        if column in table.column_names:
            value = table.column(column)[i].as_py()
            text = repr(value)
            what += f" (value {text if len(text) <= 80 else text[:77] + '...'})"
        raise DataError(
            what,
            path=self.files[fidx],
            column=column,
            row=int(row),
            line=self.source.line_of(row, fidx),
        )

    def _check_bad_fraction(self, tally: SkipTally) -> None:
        """:func:`check_bad_fraction` over this shard's rows of the epoch (+ CSV bad lines)."""
        _, _, lo, hi = self._plan(tally.epoch)
        path = self.files[0] if len(self.files) == 1 else None
        check_bad_fraction(
            tally.epoch_skipped,
            hi - lo + tally.lines,
            self.max_bad_fraction,
            tally.epoch,
            tally.epoch_bad,
            self.quarantine,
            path,
        )

    def _produce(self) -> Iterator[tuple[Batch | None, dict[str, Any]]]:
        """(batch, state after it) for the rest of the current epoch, then (None, next epoch).

        The last batch of an epoch leaves the state at the end of that epoch, not
        at the start of the next: a resumed ``for batch in reader`` then yields the
        (empty) rest of the epoch, so a trainer that counts an epoch when its loop
        over the reader completes stays in step with the reader.
        """
        s = dict(self._state)
        tally = SkipTally(s)
        carry: Columns | None = None
        chunks = self._chunks(tally.epoch, s["chunk"])
        if self.prefetch > 0:  # decode the next chunk (Arrow, GIL released) while converting
            chunks = background(chunks, 1, "recis-io-read")
        last = (s["chunk"], s["pos"])
        for c, table, files, rows, lines in chunks:
            pos = s["pos"] if c == s["chunk"] else 0
            if lines and pos == 0:  # a resumed chunk (pos > 0) counted its lines already
                self._quarantine.write(lines)
                tally.lines += len(lines)
                tally.count(Counter({BAD_LINE: len(lines)}))
            carry = yield from self._batches(tally, c, table, files, rows, pos, carry)
            last = (c, table.num_rows)
            self._check_bad_fraction(tally)
        if carry is not None and carry.num_rows and not self.drop_last:
            yield self._finish(carry), tally.state(*last)
        self._check_bad_fraction(tally)
        yield None, tally.next_epoch()

    def _batches(  # noqa: ANN001 - the chunk's arrays, as in _produce
        self,
        tally: SkipTally,
        c: int,
        table: pa.Table,
        files,
        rows,
        pos: int,
        carry: Columns | None,
    ) -> Generator[tuple[Batch, dict[str, Any]], None, Columns | None]:
        """(batch, state after it) for chunk ``c`` from ``pos`` on, the first batch completing
        ``carry`` (rows left from the chunk before); returns the rows left over."""
        n = table.num_rows
        perm, code, reasons = self._order(tally.epoch, c, table, files, rows, pos)
        good = pos + np.flatnonzero(code[pos:] == 0)
        cols = self._convert(table, perm[good])
        k = 0
        while k < len(good):
            need = self.batch_size - (carry.num_rows if carry is not None else 0)
            sel = good[k : k + need]
            end = int(sel[-1]) + 1 if len(sel) == need else n
            tally.count(self._skip(table, code, perm, reasons, files, rows, pos, end))
            part = cols.slice(k, k + len(sel))
            carry = part if carry is None else Columns.concat([carry, part])
            pos, k = end, k + need
            if carry.num_rows == self.batch_size:
                yield self._finish(carry), tally.state(c, pos)
                carry = None
        tally.count(self._skip(table, code, perm, reasons, files, rows, pos, n))
        return carry

    def _order(  # noqa: ANN001 - the chunk's arrays, as in _produce
        self, epoch: int, c: int, table: pa.Table, files, rows, pos: int
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Chunk ``c``'s emission order ``perm [n]`` (shuffled by seed, epoch, shard and
        chunk), each emitted row's bad-row code ``[n]`` in that order, and the reasons;
        with ``on_bad_row: raise``, the first bad row from ``pos`` on is a DataError."""
        n = table.num_rows
        perm = (
            np.random.default_rng([self.seed, epoch, self.shard, c]).permutation(n)
            if self.shuffle
            else np.arange(n)
        )
        code, reasons = bad_rows(table, self.schema, self.nan_policy)
        code = code[perm]
        if self.on_bad_row == "raise" and code[pos:].any():
            p = pos + int(np.flatnonzero(code[pos:])[0])
            i = int(perm[p])
            self._raise_bad(reasons[code[p] - 1], table, i, files[i], rows[i])
        return perm, code, reasons

    def _convert(self, table: pa.Table, idx: np.ndarray) -> Columns:
        """Rows ``idx`` of ``table``, converted once in emission order (batches are slices):
        a contiguous run is a zero-copy slice, anything else a take."""
        if len(idx) and idx[-1] - idx[0] == len(idx) - 1 and (np.diff(idx) == 1).all():
            return convert_columns(table.slice(int(idx[0]), len(idx)), self.schema)
        return convert_columns(table.take(pa.array(idx)), self.schema)

    def _skip(  # noqa: ANN001 - the chunk's arrays, as in _produce
        self, table, code, perm, reasons, files, rows, lo: int, hi: int
    ) -> Counter:
        """Quarantine the bad rows among permuted positions ``[lo, hi)``; their count per reason."""
        bad = lo + np.flatnonzero(code[lo:hi])
        if not len(bad):
            return Counter()
        if self.quarantine is not None:
            idx = perm[bad]
            values = table.take(pa.array(idx)).to_pylist()
            self._quarantine.write(
                [
                    record(
                        self.files[files[i]],
                        rows[i],
                        self.source.line_of(rows[i], files[i]),
                        reasons[code[b] - 1],
                        values=v,
                    )
                    for b, i, v in zip(bad, idx, values)
                ]
            )
        per = np.bincount(code[bad], minlength=len(reasons) + 1)
        return Counter({reasons[j - 1]: int(per[j]) for j in np.flatnonzero(per)})

    def _finish(self, cols: Columns) -> Batch:
        batch = cols.to_batch()
        return batch.pin_memory() if self.pin else batch

    def __iter__(self) -> Iterator[Batch]:
        """One epoch (the rest of it after a resume or an interrupted iteration)."""
        items = self._produce()
        if self.prefetch > 0:
            items = background(items, self.prefetch, "recis-io-prefetch")
        for batch, state in items:
            # the position moves only when the consumer receives the batch
            with self._lock:
                self._state = state
            if batch is not None:
                yield batch
