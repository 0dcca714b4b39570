"""Rows a reader skips (``on_bad_row: skip``): the quarantine file and the bad-row limit.

A quarantine record is one JSON line ``{"file", "row", "line" (CSV only), "reason",
"values"}`` (a CSV line with the wrong number of fields: ``"text"`` instead of
``"values"``). ``row`` is the 0-based data row within the file, ``line`` the CSV
line (1-based, header counted): the convention of every recis message.
"""

from __future__ import annotations

import errno
import json
import os
from collections import Counter
from typing import Any

from recis.errors import DataError, OutputError

BAD_LINE = "bad line"  # the reason of a CSV line with the wrong number of fields


class Quarantine:
    """Appends skipped rows to the JSON-lines file ``path`` (None: they are only counted).

    Each bad row is listed once, however many epochs, resumes or read-ahead restarts read
    it again (the per-epoch counts are in the run's metrics): rows already in the file are
    not appended again. A write that fails (disk full, a file size limit, no permission) is
    one :class:`~recis.errors.OutputError` line naming the file.
    """

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = str(path) if path is not None else None
        self._listed: set[tuple] | None = None  # keys of the records in the file

    def _known(self) -> set[tuple]:
        """Keys of the records already in the file (read once, at the first write)."""
        if self._listed is None:
            self._listed = set()
            if self.path is not None and os.path.isfile(self.path):
                with open(self.path, "rb") as f:
                    for line in f:
                        try:
                            self._listed.add(_key(json.loads(line)))
                        except (ValueError, AttributeError):
                            continue  # a line torn by a crash: rewritten below if its row returns
        return self._listed

    def write(self, records: list[dict[str, Any]]) -> None:
        if self.path is None or not records:
            return
        try:
            known = self._known()
            new = [r for r in records if _key(r) not in known]
            if not new:
                return
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            torn = False  # a last line cut by a crash: start on a line of our own
            if os.path.isfile(self.path) and os.path.getsize(self.path) > 0:
                with open(self.path, "rb") as f:
                    f.seek(-1, os.SEEK_END)
                    torn = f.read(1) != b"\n"
            with open(self.path, "ab") as f:
                if torn:
                    f.write(b"\n")
                for r in new:
                    f.write((json.dumps(r, default=str) + "\n").encode())
                    known.add(_key(r))
        except OSError as err:
            why = os.strerror(err.errno) if err.errno else str(err)
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                why += " (disk full)"
            raise OutputError(f"cannot write quarantine file {self.path}: {why}") from None


def _key(r: dict[str, Any]) -> tuple:
    return (r.get("file"), r.get("row"), r.get("line"), r.get("reason"))


def record(path: str, row: int, line: int | None, reason: str, **payload: Any) -> dict[str, Any]:
    """One quarantine record (``line`` only for CSV)."""
    r: dict[str, Any] = {"file": path, "row": int(row)}
    if line is not None:
        r["line"] = int(line)
    return {**r, "reason": reason, **payload}


def check_bad_fraction(
    skipped: int,
    total: int,
    limit: float,
    epoch: int,
    reasons: Counter,
    quarantine: str | None = None,
    path: str | None = None,
) -> None:
    """Raise a DataError once ``skipped`` of an epoch's ``total`` rows pass ``limit`` (a
    fraction), or when all of them are bad whatever the limit.

    Called as chunks end: the skipped count only grows, so passing the bound early is final.
    The message gives the counts and the three most common ``reasons``.
    """
    if not total or not (skipped > limit * total or skipped >= total):
        return
    top = ", ".join(f"{k!r}: {v}" for k, v in reasons.most_common(3))
    what = f"all {total} rows" if skipped >= total else f"{skipped} (or more) of {total} rows"
    raise DataError(
        f"{what} of epoch {epoch} are bad (max_bad_fraction {limit:g}; most common: {top})"
        + (f"; see {quarantine}" if quarantine else ""),
        path=path,
    )
