"""Timing that cannot flatter: alternating runs, medians with min and max, wall and CPU time.

Every side of a comparison runs the same number of runs, in alternating order (the side
that goes first changes each round, so a slow spell of the shared machine hits both);
a ratio is the ratio of the two sides' MEDIAN run times, reported with the min and max
of the per-round ratios. CPU time (``time.process_time``: all threads of this process)
is taken beside wall time: on a busy machine wall time grows while CPU time does not.
The machine's load average is recorded before and after.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Runs:
    """Per-run wall and CPU seconds of one side (one entry per run)."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def stats(self, prefix: str, scale: float = 1e3) -> dict[str, float]:
        """``{prefix}_ms`` (median wall), ``_ms_min``, ``_ms_max``, ``_cpu_ms`` (median CPU)."""
        w = np.asarray(self.wall) * scale
        c = np.asarray(self.cpu) * scale
        return {
            f"{prefix}_ms": float(np.median(w)),
            f"{prefix}_ms_min": float(w.min()),
            f"{prefix}_ms_max": float(w.max()),
            f"{prefix}_cpu_ms": float(np.median(c)),
        }


def alternate(
    sides: dict[str, Callable[[int], None]],
    runs: int,
    steps: int = 1,
    warmup: int = 1,
    before: Callable[[str], None] | None = None,
) -> dict[str, Runs]:
    """Run each side ``warmup`` then ``runs`` times, alternating; a run is ``steps`` calls
    ``fn(i)`` (``i`` counts that side's calls from 0) and its time is their mean.
    ``before(name)`` runs (untimed) before each run of side ``name``."""
    names = list(sides)
    out = {k: Runs() for k in names}
    calls = dict.fromkeys(names, 0)
    for r in range(warmup + runs):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            if before is not None:
                before(name)
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(steps):
                sides[name](calls[name])
                calls[name] += 1
            w1, c1 = time.perf_counter(), time.process_time()
            if r >= warmup:
                out[name].wall.append((w1 - w0) / steps)
                out[name].cpu.append((c1 - c0) / steps)
    return out


def ratio(slow: Runs, fast: Runs, prefix: str) -> dict[str, float]:
    """``{prefix}`` = median(slow) / median(fast) (wall), with the min and max of the
    per-round ratios, and the CPU-time ratio of medians (``{prefix}_cpu``)."""
    per_round = np.asarray(slow.wall) / np.asarray(fast.wall)
    return {
        prefix: float(np.median(slow.wall) / np.median(fast.wall)),
        f"{prefix}_min": float(per_round.min()),
        f"{prefix}_max": float(per_round.max()),
        f"{prefix}_cpu": float(np.median(slow.cpu) / np.median(fast.cpu)),
    }


def load() -> float:
    """The 1-minute load average."""
    return float(os.getloadavg()[0])


_SPIN = "import time\nwhile True:\n    sum(range(10000))\n"


@contextmanager
def competitor(cores: set[int]) -> Iterator[Callable[[bool], None]]:
    """A CPU-bound process pinned to ``cores``; yields ``on(flag)`` that runs (True) or
    stops (False, SIGSTOP) it, so busy and idle runs can alternate in one run."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _SPIN], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        os.sched_setaffinity(proc.pid, cores)
        os.kill(proc.pid, signal.SIGSTOP)

        def on(flag: bool) -> None:
            os.kill(proc.pid, signal.SIGCONT if flag else signal.SIGSTOP)
            if flag:
                time.sleep(0.02)  # let it get onto a core

        yield on
    finally:
        proc.kill()
        proc.wait()
