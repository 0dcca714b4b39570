"""recis.ops.cores: thread pools sized to the cores the process may use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from recis.ops.cores import cgroup_quota, usable_cores


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux affinity API")
def test_affinity_mask_is_respected_in_a_pinned_process() -> None:
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))});"
        "from recis.ops.cores import usable_cores; print(usable_cores())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
    assert usable_cores() == len(os.sched_getaffinity(0)) or cgroup_quota() is not None


def _cgroup(tmp_path: Path, v2: dict[str, str], line: str = "0::/a/b") -> tuple[Path, Path]:
    for rel, text in v2.items():
        (tmp_path / rel).mkdir(parents=True, exist_ok=True)
        (tmp_path / rel / "cpu.max").write_text(text)
    proc = tmp_path / "proc_cgroup"
    proc.write_text(line + "\n")
    return tmp_path, proc


def test_cgroup_v2_quota_caps_cores(tmp_path: Path) -> None:
    # the innermost quota is 1.5 cores, a parent's 4: the tightest one wins, rounded down
    root, proc = _cgroup(tmp_path, {"a": "400000 100000", "a/b": "150000 100000"})
    assert cgroup_quota(root, proc) == 1.5
    assert usable_cores(root, proc) == 1
    root, proc = _cgroup(tmp_path / "x", {"a/b": "max 100000"})
    assert cgroup_quota(root, proc) is None
    assert usable_cores(root, proc) == len(os.sched_getaffinity(0))


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    d = tmp_path / "cpu" / "job"
    d.mkdir(parents=True)
    (d / "cpu.cfs_quota_us").write_text("100000\n")
    (d / "cpu.cfs_period_us").write_text("50000\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text("4:memory:/job\n2:cpu,cpuacct:/job\n")
    assert cgroup_quota(tmp_path, proc) == 2.0
    (d / "cpu.cfs_quota_us").write_text("-1\n")  # unlimited
    assert cgroup_quota(tmp_path, proc) is None
