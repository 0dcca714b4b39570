"""A :class:`~recis.io.reader.Reader`'s option checks and the bookkeeping of its position.

The reader's state is a small dict (``epoch``, ``chunk``, ``pos``, skip counts overall and
per reason): :func:`start_state` makes the one at an epoch's start, :class:`SkipTally`
counts the rows skipped while an epoch is produced and says the state after each batch.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from recis.errors import ConfigError

from .sources import SUFFIXES

STATE_VERSION = 2
STATE_KEYS = ("epoch", "chunk", "pos", "skipped", "epoch_skipped")


def check_options(o: dict[str, Any]) -> None:
    """One ConfigError naming every invalid :class:`Reader` option (``o``: its arguments)."""
    checks = {
        "batch_size": o["batch_size"] > 0,
        "shuffle_buffer": o["shuffle_buffer"] > 0,
        "format": o["format"] in SUFFIXES,
        "rank": 0 <= o["rank"] < o["world_size"],
        "worker": 0 <= o["worker"] < o["num_workers"],
        "nan_policy": o["nan_policy"] in ("fill", "raise"),
        "on_bad_row": o["on_bad_row"] in ("raise", "skip"),
        "max_bad_fraction": 0.0 <= o["max_bad_fraction"] <= 1.0,
        "on_missing_column": o["on_missing_column"] in ("raise", "null"),
        "window": o.get("window") is None or 0 <= o["window"][0] < o["window"][1] <= 1,
    }
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        shown = {
            **o,
            "rank": f"{o['rank']}/{o['world_size']}",
            "worker": f"{o['worker']}/{o['num_workers']}",
        }
        raise ConfigError("; ".join(f"{k}: invalid value {shown[k]!r}" for k in bad))


def start_state(
    epoch: int,
    skipped: int = 0,
    bad: dict[str, int] | None = None,
    last_epoch_bad: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The state at the start of ``epoch``, carrying the totals of the epochs before."""
    return {
        "epoch": epoch,
        "chunk": 0,
        "pos": 0,
        "skipped": skipped,
        "epoch_skipped": 0,
        "bad": dict(bad or {}),  # all epochs, per reason
        "epoch_bad": {},  # this epoch, per reason
        "last_epoch_bad": dict(last_epoch_bad or {}),  # the epoch before, per reason
    }


class SkipTally:
    """Rows skipped while one epoch is produced, from the state ``s`` it resumes at.

    A resumed epoch keeps its counts; ``lines`` counts the CSV bad lines met in this pass.
    """

    def __init__(self, s: dict[str, Any]) -> None:
        self.epoch = int(s["epoch"])
        self.skipped = int(s["skipped"])
        self.epoch_skipped = int(s["epoch_skipped"])
        self.lines = 0
        self.bad: Counter = Counter(s["bad"])
        self.epoch_bad: Counter = Counter(s["epoch_bad"])
        self.last_epoch_bad = s["last_epoch_bad"]

    def count(self, reasons: Counter) -> None:
        """Add skipped rows, ``{reason: count}``."""
        n = sum(reasons.values())
        self.skipped += n
        self.epoch_skipped += n
        self.bad.update(reasons)
        self.epoch_bad.update(reasons)

    def state(self, chunk: int, pos: int) -> dict[str, Any]:
        """The reader state at ``pos`` of ``chunk`` with the counts so far."""
        return {
            "epoch": self.epoch,
            "chunk": chunk,
            "pos": pos,
            "skipped": self.skipped,
            "epoch_skipped": self.epoch_skipped,
            "bad": dict(self.bad),
            "epoch_bad": dict(self.epoch_bad),
            "last_epoch_bad": self.last_epoch_bad,
        }

    def next_epoch(self) -> dict[str, Any]:
        """The state at the start of the next epoch (this epoch's counts become the last's)."""
        return start_state(self.epoch + 1, self.skipped, dict(self.bad), dict(self.epoch_bad))
