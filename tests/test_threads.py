"""recis sizes torch's thread pool by the cores the process may use, shared among the
run's processes on the node, unless the config or OMP_NUM_THREADS says otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# one process for several cases (each "cores processes threads"): torch loads once
PROBE = """
import os, sys
from recis.train.runner import set_threads
for case in sys.argv[1:]:
    cores, processes, threads = case.split()
    os.sched_setaffinity(0, {int(c) for c in cores.split(",")})
    print(set_threads(None, int(processes)), set_threads(int(threads) or None, 1))
"""


def _pools(*cases: tuple[str, int, int], omp: str | None = None) -> list[list[int]]:
    """``[pool without threads, pool with threads]`` per ``(cores, processes, threads)``."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    args = [sys.executable, "-c", PROBE, *(f"{c} {p} {t}" for c, p, t in cases)]
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, check=True)
    return [[int(x) for x in line.split()] for line in out.stdout.splitlines()]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 usable cores")
def test_pool_follows_affinity_and_processes_per_node() -> None:
    one, two, shared = _pools(("0", 1, 3), ("0,1", 1, 0), ("0,1", 2, 0))
    # one core in the mask: one thread, whatever the machine has; the config's figure wins
    assert one == [1, 3]
    # two cores: two threads for one process, one each for two processes on this node
    assert two[0] == 2
    assert shared[0] == 1


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 usable cores")
def test_an_exported_omp_num_threads_is_kept() -> None:
    # torchrun exports OMP_NUM_THREADS=1 for N > 1 processes; a user may export any value
    assert _pools(("0,1", 1, 0), omp="1")[0][0] == 1


WAIT = """
import os, sys, time
import recis  # before torch: sets the OpenMP wait policy libgomp reads when torch loads it
import torch
torch.set_num_threads(2)
x = torch.randn(1 << 21)
for _ in range(20):
    x.mul(2.0).sum()  # parallel regions: the second thread then waits for more work
c0 = time.process_time()
time.sleep(0.5)
print(os.environ["OMP_WAIT_POLICY"], time.process_time() - c0)
"""


def _idle_cpu(policy: str | None) -> tuple[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run(
        [sys.executable, "-c", WAIT], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    name, cpu = out.stdout.split()
    return name, float(cpu)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 usable cores")
def test_waiting_openmp_threads_sleep_unless_the_user_asks_to_spin() -> None:
    # recis' default: the idle worker thread costs no CPU while the process sleeps
    name, passive = _idle_cpu(None)
    assert name == "PASSIVE" and passive < 0.02
    # an exported policy is kept: ACTIVE spins through the whole sleep
    name, active = _idle_cpu("ACTIVE")
    assert name == "ACTIVE" and active > 5 * passive and active > 0.02
