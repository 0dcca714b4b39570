"""How many CPU cores this process may use: its affinity mask, capped by a cgroup CPU quota.

``os.cpu_count()`` is the machine's core count; a process pinned with ``taskset``, or
run in a container with ``--cpus 2``, may use fewer. Thread pools sized to the
machine then oversubscribe the cores the process really has, and every OpenMP
barrier waits for a thread the kernel has parked (on a busy 2-core machine a
2-thread step measured 4-10x slower than a 1-thread one, issue 23).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cgroup_dirs(root: Path, proc_cgroup: Path) -> list[Path]:
    """The process's cgroup directory and its parents under ``root`` (v2: one ``0::`` line;
    v1: the ``cpu`` controller's line), innermost first; ``[root]`` when unknown."""
    text = _read(proc_cgroup) or ""
    rel = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":  # cgroup v2
            rel = parts[2]
        elif "cpu" in parts[1].split(","):  # cgroup v1 cpu controller
            root_v1 = root / "cpu" if (root / "cpu").is_dir() else root / parts[1]
            return _parents(root_v1, parts[2])
    return _parents(root, rel) if rel else [root]


def _parents(root: Path, rel: str) -> list[Path]:
    out = []
    here = root / rel.strip("/") if rel.strip("/") else root
    while True:
        out.append(here)
        if here == root or root not in here.parents:
            break
        here = here.parent
    return out


def cgroup_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path | None = None) -> float | None:
    """The CPU quota in cores (``quota / period``, the smallest along the cgroup path), or
    None when unlimited or unreadable. cgroup v2 ``cpu.max`` (``"max 100000"`` or
    ``"200000 100000"``), else v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``."""
    best: float | None = None
    for d in _cgroup_dirs(root, proc_cgroup or Path("/proc/self/cgroup")):
        quota: float | None = None
        v2 = _read(d / "cpu.max")
        if v2:
            q, _, period = v2.partition(" ")
            if q != "max" and period:
                quota = int(q) / int(period)
        else:
            q1, p1 = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
            if q1 and p1 and int(q1) > 0 and int(p1) > 0:
                quota = int(q1) / int(p1)
        if quota is not None and quota > 0:
            best = quota if best is None else min(best, quota)
    return best


def usable_cores(root: Path = CGROUP_ROOT, proc_cgroup: Path | None = None) -> int:
    """Cores this process may use: the CPUs of its affinity mask, capped by the cgroup
    quota rounded down (at least 1). Size thread pools (torch intra-op, readers) by this,
    not by ``os.cpu_count()``."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        n = os.cpu_count() or 1
    quota = cgroup_quota(root, proc_cgroup)
    if quota is not None:
        n = min(n, max(1, math.floor(quota)))
    return max(1, n)


def processes_on_node() -> int | None:
    """Processes of this run on this node, as torchrun (``LOCAL_WORLD_SIZE``) or horovodrun
    (``HOROVOD_LOCAL_SIZE``) export it; None when neither launched this process."""
    for key in ("LOCAL_WORLD_SIZE", "HOROVOD_LOCAL_SIZE"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return None
