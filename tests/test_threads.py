"""recis sizes torch's thread pool by the cores the process may use, shared among the
run's processes on the node, unless the config or OMP_NUM_THREADS says otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import os, sys
os.sched_setaffinity(0, {int(c) for c in sys.argv[1].split(",")})
from recis.train.runner import set_threads
print(set_threads(None, int(sys.argv[2])), set_threads(int(sys.argv[3]) or None, 1))
"""


def _pool(cores: str, processes: int, threads: int, omp: str | None = None) -> list[int]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    args = [sys.executable, "-c", PROBE, cores, str(processes), str(threads)]
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, check=True)
    return [int(x) for x in out.stdout.split()]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 usable cores")
def test_pool_follows_affinity_and_processes_per_node() -> None:
    # one core in the mask: one thread, whatever the machine has; the config's figure wins
    assert _pool("0", 1, 3) == [1, 3]
    # two cores: two threads for one process, one each for two processes on this node
    assert _pool("0,1", 1, 0)[0] == 2
    assert _pool("0,1", 2, 0)[0] == 1


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 usable cores")
def test_an_exported_omp_num_threads_is_kept() -> None:
    # torchrun exports OMP_NUM_THREADS=1 for N > 1 processes; a user may export any value
    assert _pool("0,1", 1, 0, omp="1")[0] == 1
