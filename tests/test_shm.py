"""The shared-memory all-to-all of ranks on one host (recis.distributed.shm).

3 real ranks (torchrun, gloo) check every call against gloo's ``all_to_all_single``:
uneven and empty splits, several dtypes, a call larger than the first segments (they
grow), the cleanup, and ``RECIS_SHM_EXCHANGE=0`` on one rank. One process checks the
message bookkeeping (a rank one call ahead) and a dead peer.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from recis.distributed.shm import _MSG, SharedMemoryAllToAll

sys.path.insert(0, str(Path(__file__).parent))
import distributed_worker as w  # noqa: E402

sys.path.pop(0)

_RANK = r"""
import os, sys
from pathlib import Path
import torch, torch.distributed as dist
from recis.distributed.shm import local_exchange

torch.set_num_threads(1)
dist.init_process_group("gloo")
me, world = dist.get_rank(), dist.get_world_size()
ex = local_exchange(None, torch.device("cpu"))
assert ex is not None, "one host: shared memory expected"
assert local_exchange(None, torch.device("meta")) is None  # not CPU: the process group
checked = 0
for call in range(8):
    def split(src, dst):  # every rank computes every split
        n = (7 * src + 3 * dst + 5 * call) % 6  # 0 to 5 rows, some empty
        # call 5 (bf16): 0.6 to 3 MB per block, past the first 1 MB segments of every rank
        return (n % 5 + 1) * 100_000 if call == 5 else n
    send = [split(me, d) for d in range(world)]
    recv = [split(s, me) for s in range(world)]
    dtype = [torch.float32, torch.int64, torch.bfloat16][call % 3]
    g = torch.Generator().manual_seed(100 * call + me)
    x = (torch.rand(sum(send), 3, generator=g) * 1000).to(dtype)
    got = torch.full((sum(recv), 3), -1).to(dtype)
    ex(got, x, recv, send)
    want = torch.empty_like(got)
    dist.all_to_all_single(want, x, recv, send)
    assert torch.equal(got, want), (call, me)
    checked += 1
uid = ex.uid
ex.close()
dist.barrier()
left = [p.name for p in Path("/dev/shm").glob(f"recis-{uid}-*")]
# RECIS_SHM_EXCHANGE=0 on one rank: every rank stays on the process group
os.environ["RECIS_SHM_EXCHANGE"] = "0" if me == 1 else "1"
off = local_exchange(None, torch.device("cpu")) is None
Path(sys.argv[1], f"rank{me}.txt").write_text(f"{checked} {ex.generation} {off} {left}")
dist.destroy_process_group()
"""


def test_three_ranks_equal_gloo_and_clean_up(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(_RANK)
    cmd = [w.TORCHRUN, "--nproc-per-node", "3", "--master-port", w.free_port(), script, tmp_path]
    w.run_all([w.spawn(cmd)])
    for r in range(3):
        checked, generation, off, left = (tmp_path / f"rank{r}.txt").read_text().split(" ", 3)
        assert checked == "8" and off == "True" and left == "[]"
        assert int(generation) >= 1  # call 5 outgrew the first segments


def _lone(rank: int, world: int, pids: list[int]) -> SharedMemoryAllToAll:
    return SharedMemoryAllToAll(rank, world, uuid.uuid4().hex[:12], pids, timeout_s=30)


def test_a_message_of_the_next_call_waits_for_it():
    ex = _lone(2, 3, [os.getpid()] * 3)
    try:
        # (call, source, generation, offset, bytes): rank 0 is one call ahead, its call-1
        # message comes before rank 1's call-0 one
        for msg in [(0, 0, 0, 0, 8), (1, 0, 0, 16, 24), (0, 1, 0, 32, 8), (1, 1, 0, 0, 4)]:
            os.write(ex._rfd, _MSG.pack(*msg))
        assert ex._messages(0) == [(0, 0, 0, 8), (1, 0, 32, 8)]
        assert ex._messages(1) == [(0, 0, 16, 24), (1, 0, 0, 4)]
    finally:
        ex.close()


def test_a_dead_rank_is_named_and_segments_go():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ex = _lone(0, 2, [os.getpid(), dead.pid])
    names = [Path("/dev/shm", seg.name) for seg in ex._own] + [ex._fifo]
    assert all(p.exists() for p in names)
    try:
        with pytest.raises(
            RuntimeError, match=r"waiting for rank\(s\) \[1\]: rank\(s\) \[1\] exited"
        ):
            ex._messages(0)
    finally:
        ex.close()
    assert not any(p.exists() for p in names)
    ex.close()  # again: nothing


def test_a_full_dev_shm_is_a_clear_error(monkeypatch):
    """Pages are reserved when a segment is made: no room is an error that says what to do
    (not a SIGBUS at the first write)."""
    import errno

    def full(fd, offset, size):  # noqa: ANN001
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(OSError, match=r"cannot reserve 1.0 MB in /dev/shm .*RECIS_SHM_EXCHANGE=0"):
        _lone(0, 2, [os.getpid()] * 2)
