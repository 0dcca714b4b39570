"""Run logs: buffered JSONL (every record) and TensorBoard scalars, in the run directory."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

from recis.errors import DataError, OutputError


class RunLogger:
    """Appends records to ``run_dir/metrics.jsonl`` and scalars to ``run_dir/tb``.

    JSONL lines are buffered and written every ``flush_every`` records (and on
    :meth:`flush`, which the trainer calls at every evaluation, checkpoint and exit), so
    logging every step costs a ``json.dumps``, not a write.

    Args:
        run_dir: the run directory (None: keep nothing).
        tensorboard: also write TensorBoard event files (needs ``tensorboard``).
        flush_every: records per JSONL write.
    """

    def __init__(
        self, run_dir: str | Path | None, tensorboard: bool = True, flush_every: int = 200
    ) -> None:
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.flush_every = flush_every
        self._lines: list[str] = []
        self._checked = False  # a torn last line (a killed writer) removed before appending
        self._tb: Any = None
        self._want_tb = tensorboard and self.run_dir is not None

    def _writer(self) -> Any:
        if self._tb is None and self._want_tb:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # optional extra (recis[plots])
                warnings.warn("tensorboard is not installed: no TensorBoard logs", stacklevel=2)
                self._want_tb = False
                return None
            assert self.run_dir is not None
            self._tb = SummaryWriter(str(self.run_dir / "tb"))
        return self._tb

    def log(self, record: dict[str, Any]) -> None:
        """Keep one JSON record (``step`` and ``split`` by convention)."""
        if self.run_dir is None:
            return
        self._lines.append(json.dumps(record))
        if len(self._lines) >= self.flush_every:
            self.flush()

    def scalars(self, record: dict[str, Any]) -> None:
        """Write the numeric fields of ``record`` to TensorBoard under ``split/name``."""
        writer = self._writer()
        if writer is None:
            return
        split, step = record.get("split", "train"), int(record.get("step", 0))
        for k, v in record.items():
            if k in ("step", "split", "epoch") or not isinstance(v, int | float):
                continue
            if isinstance(v, float) and math.isnan(v):
                continue
            writer.add_scalar(f"{split}/{k}", v, step)

    def flush(self, sync: bool = False) -> None:
        """Append the buffered records to metrics.jsonl (``sync``: and fsync it, as at a
        checkpoint, so that a run killed later resumes with no hole in its history).

        A write error (disk full, file too large) is an :class:`OutputError` naming the file;
        the records stay buffered for a later try."""
        if self.run_dir is None:
            return
        path = self.run_dir / "metrics.jsonl"
        if self._lines or sync:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                if not self._checked:
                    _drop_torn_tail(path)
                    self._checked = True
                with open(path, "a") as f:
                    if self._lines:
                        f.write("\n".join(self._lines) + "\n")
                    f.flush()
                    if sync:
                        os.fsync(f.fileno())
            except OSError as err:
                self._checked = False  # a part may be written: cut it before the next try
                raise OutputError(f"{path}: cannot write metrics: {err.strerror}") from None
            self._lines.clear()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self.flush()
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line left without its newline by a writer killed mid-write, so that the
    records appended after it (a resumed run's) start on a line of their own."""
    try:
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            keep = 0
            pos = size
            while pos > 0 and not keep:  # the last newline, read backwards in blocks
                start = max(0, pos - 65536)
                f.seek(start)
                block = f.read(pos - start)
                i = block.rfind(b"\n")
                if i >= 0:
                    keep = start + i + 1
                pos = start
            f.truncate(keep)
    except FileNotFoundError:
        return


# ``recis eval`` logs its results as ``split: "eval:<eval data>"``, never ``eval``: a run's
# history keeps one record per (split, step), so an evaluation of a checkpoint logged as
# ``eval`` at that checkpoint's step would replace the training's own record of it
STANDALONE_EVAL_PREFIX = "eval:"


def standalone_eval_split(data: str | list[str]) -> str:
    """The split name of a ``recis eval`` of eval data ``data`` (a path or paths, as in
    ``data.eval``): ``eval:<data>``, apart from the training's ``eval`` records."""
    name = data if isinstance(data, str) else ",".join(str(d) for d in data)
    return f"{STANDALONE_EVAL_PREFIX}{name}"


class TornRecordWarning(UserWarning):
    """The last line of a metrics file was cut (a crash while it was written): skipped."""


def read_records(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl``; for a resumed run, the last one per (split, step).

    ``recis eval`` results are records of their own split (:func:`standalone_eval_split`),
    so they never replace a training's ``eval`` record of the same step.

    A last line that is not a whole JSON record (cut by a crash mid-write) is skipped with a
    :class:`TornRecordWarning`; such a line anywhere else is a :class:`DataError` naming the
    file and its (1-based) line.
    """
    path = Path(run_dir) / "metrics.jsonl"
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as err:
        raise DataError(f"cannot read metrics ({err.strerror})", path=str(path)) from None
    while lines and not lines[-1].strip():
        lines.pop()
    last: dict[tuple[str, int], dict[str, Any]] = {}
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            if not isinstance(r, dict):
                raise TypeError(f"a JSON object was expected, not {type(r).__name__}")
            key = (str(r.get("split", "train")), int(r.get("step", 0)))
        except (ValueError, TypeError) as err:
            why = (
                f"{err.msg} at column {err.colno}" if isinstance(err, json.JSONDecodeError) else err
            )
            what = f"line {n} is not a metrics record ({why})"
            if n == len(lines):
                warnings.warn(f"{path}: {what}: skipped (cut by a crash?)", TornRecordWarning, 2)
                break
            raise DataError(what, path=str(path)) from None
        last[key] = r
    return sorted(last.values(), key=lambda r: (int(r.get("step", 0)), r.get("split", "")))
