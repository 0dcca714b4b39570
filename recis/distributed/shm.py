"""All-to-all between the ranks of one host through shared memory.

The hashed engine's exchange (:mod:`recis.distributed.embedding`) sends pooled rows forward
and their gradients backward in one ``all_to_all_single`` each, on the step's path. On
gloo, ranks of one host talk over loopback TCP: 1.6 to 1.9 ms wall and 0.9 to 1.0 ms of
CPU for 1.7 MB to the other rank (2 ranks, 2 cores), where copies into and out of shared
memory take 0.35 to 0.4 ms wall and 0.3 ms of CPU (``benchmarks/distributed.py
--collectives``).

Each rank writes the blocks for the other ranks into a shared-memory segment of its own
(two, used in turn), tells each reader where its block is with a 40-byte message on the
reader's FIFO, copies its own block locally, and copies the blocks addressed to it out of
the writers' segments. Two segments per rank are enough: a rank starts its call ``e + 2``
only after every other rank started call ``e + 1``, which each does only after it has
read everything of call ``e``. A segment too small for a call is replaced by a larger
one (a new generation, named in the messages). Calls are blocking and must come in the
same order on every rank, like the collectives they replace.

:func:`local_exchange` sets it up when every rank of the group runs on this host and can
open the others' segments and FIFOs (checked, collectively), on CPU; otherwise, or with
``RECIS_SHM_EXCHANGE=0``, the exchange stays on the process group. A rank that dies is
noticed by the others within a second (its process is gone) and named in the error.
Segments are unlinked by their rank at shutdown, and by Python's resource tracker when a
rank dies without cleaning up; the FIFOs are unlinked once every rank has opened them.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import socket
import struct
import tempfile
import time
import uuid
import weakref
from itertools import accumulate
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .embedding.exchange import Exchange

__all__ = ["SharedMemoryAllToAll", "local_exchange"]

_MSG = struct.Struct("qqqqq")  # call, source rank, generation, byte offset, bytes
_FIRST_CAPACITY = 1 << 20  # bytes per segment at first; grown to fit (x2 at least)


def _fifo_dir() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


class SharedMemoryAllToAll(Exchange):
    """``all_to_all_single`` (uneven splits along dim 0) for the ranks of one host.

    Build it with :func:`local_exchange` (collective). ``timeout_s``: how long a call waits
    for the other ranks before it raises.
    """

    def __init__(
        self, rank: int, world: int, uid: str, pids: list[int], timeout_s: float = 1800.0
    ) -> None:
        self.rank, self.world, self.uid, self.pids = rank, world, uid, pids
        self.timeout_s = timeout_s
        self.call = 0
        self.generation = 0
        self._own: list[shared_memory.SharedMemory] = []
        # replaced segments and the call that replaced them: unlinked one call later, when
        # no rank can still be about to read the call before
        self._retired: list[tuple[int, shared_memory.SharedMemory]] = []
        self._peers: dict[tuple[int, int, int], shared_memory.SharedMemory] = {}
        self._early: dict[tuple[int, int], tuple[int, int, int]] = {}
        self._fifo = _fifo_dir() / f"recis-{uid}-{rank}.fifo"
        os.mkfifo(self._fifo, 0o600)
        self._rfd = os.open(self._fifo, os.O_RDWR)  # never blocks on open, never sees EOF
        self._wfds: dict[int, int] = {}
        self._finalizer = weakref.finalize(
            self, _release, self._own, self._retired, self._peers, [self._rfd], self._fifo
        )
        try:
            self._grow(_FIRST_CAPACITY)
        except OSError:
            self._finalizer()
            raise

    # ---------------------------------------------------------------- set-up
    def _name(self, rank: int, generation: int, k: int) -> str:
        return f"recis-{self.uid}-{rank}-g{generation}-{k}"

    def _grow(self, nbytes: int) -> None:
        """New segments of at least ``nbytes`` (the old ones go once nobody reads them)."""
        if self._own:
            self.generation += 1
        self._retired += [(self.call, seg) for seg in self._own]
        self._own[:] = []
        for k in range(2):
            seg = shared_memory.SharedMemory(
                name=self._name(self.rank, self.generation, k), create=True, size=max(nbytes, 1)
            )
            self._own.append(seg)
            try:  # take the pages now: a full /dev/shm is an error here, not a SIGBUS later
                os.posix_fallocate(seg._fd, 0, seg.size)  # type: ignore[attr-defined]  # no public fd
            except OSError as e:
                fs = os.statvfs("/dev/shm")
                raise OSError(
                    e.errno,
                    f"shared-memory all-to-all, rank {self.rank}: cannot reserve "
                    f"{seg.size / 2**20:.1f} MB in /dev/shm "
                    f"({fs.f_bavail * fs.f_frsize / 2**20:.0f} MB free): give the container "
                    "more (docker --shm-size) or set RECIS_SHM_EXCHANGE=0",
                ) from e

    def _open_peers(self) -> None:
        """Open the other ranks' FIFOs for writing and map their first segments."""
        for r in range(self.world):
            if r != self.rank:
                path = self._fifo.with_name(f"recis-{self.uid}-{r}.fifo")
                self._wfds[r] = os.open(path, os.O_WRONLY)
                self._segment(r, 0, 0)
                self._segment(r, 0, 1)
        self._finalizer.detach()
        fds = [self._rfd, *self._wfds.values()]
        self._finalizer = weakref.finalize(
            self, _release, self._own, self._retired, self._peers, fds, self._fifo
        )

    def _segment(self, rank: int, generation: int, k: int) -> shared_memory.SharedMemory:
        key = (rank, generation, k)
        if key not in self._peers:
            for old in [o for o in self._peers if o[0] == rank and o[1] < generation]:
                self._peers.pop(old).close()
            seg = shared_memory.SharedMemory(name=self._name(*key))
            # only the rank that created a segment unlinks it (Python 3.11 registers
            # every attach with the resource tracker, which would unlink it at exit)
            resource_tracker.unregister(seg._name, "shared_memory")  # type: ignore[attr-defined]  # the registered name
            self._peers[key] = seg
        return self._peers[key]

    # ------------------------------------------------------------- exchange
    def all_to_all(
        self, out: torch.Tensor, x: torch.Tensor, recv: list[int], send: list[int]
    ) -> None:
        """``out`` receives ``recv[s]`` rows from each rank ``s``; ``x`` sends ``send[d]``
        rows to each rank ``d`` (rows along dim 0, both contiguous CPU tensors)."""
        me, call = self.rank, self.call
        # every rank has begun this call's predecessor, so none reads anything older
        while self._retired and self._retired[0][0] < call:
            seg = self._retired.pop(0)[1]
            seg.close()
            seg.unlink()
        row = math.prod(x.shape[1:]) * x.element_size()  # bytes per row
        src = x.view(-1).view(torch.uint8) if x.numel() else torch.empty(0, dtype=torch.uint8)
        dst = out.view(-1).view(torch.uint8) if out.numel() else torch.empty(0, dtype=torch.uint8)
        so, ro = list(accumulate(send, initial=0)), list(accumulate(recv, initial=0))
        need = (so[-1] - (so[me + 1] - so[me])) * row
        if need > self._own[0].size:
            self._grow(max(need, 2 * self._own[0].size))
        seg = self._own[call % 2]
        buf = torch.frombuffer(seg.buf, dtype=torch.uint8, count=seg.size) if seg.size else None
        at = 0
        for d in range(self.world):  # the other ranks' blocks, then one message each
            if d == me:
                continue
            n = (so[d + 1] - so[d]) * row
            if n:
                assert buf is not None
                buf[at : at + n].copy_(src[so[d] * row : so[d + 1] * row])
            os.write(self._wfds[d], _MSG.pack(call, me, self.generation, at, n))
            at += n
        dst[ro[me] * row : ro[me + 1] * row].copy_(src[so[me] * row : so[me + 1] * row])
        for s, generation, offset, n in self._messages(call):
            if n != (ro[s + 1] - ro[s]) * row:
                raise RuntimeError(
                    f"shared-memory all-to-all, call {call}: rank {s} sent {n} bytes, rank "
                    f"{me} expected {(ro[s + 1] - ro[s]) * row} (the ranks' splits disagree)"
                )
            if n:
                theirs = self._segment(s, generation, call % 2)
                block = torch.frombuffer(theirs.buf, dtype=torch.uint8, count=offset + n)
                dst[ro[s] * row : ro[s + 1] * row].copy_(block[offset:])
        self.call += 1

    def _messages(self, call: int) -> list[tuple[int, int, int, int]]:
        """``(source, generation, offset, bytes)`` from every other rank for ``call``; a
        message of a later call (a rank one call ahead) is kept for then."""
        got = {s: self._early.pop((call, s)) for s in range(self.world) if (call, s) in self._early}
        deadline = time.monotonic() + self.timeout_s
        while len(got) < self.world - 1:
            ready, _, _ = select.select([self._rfd], [], [], 1.0)
            if not ready:
                self._check_peers(call, got, deadline)
                continue
            c, s, generation, offset, n = _MSG.unpack(os.read(self._rfd, _MSG.size))
            if c == call:
                got[s] = (generation, offset, n)
            else:
                self._early[(c, s)] = (generation, offset, n)
        return [(s, *got[s]) for s in sorted(got)]

    def _check_peers(self, call: int, got: dict[int, Any], deadline: float) -> None:
        missing = [s for s in range(self.world) if s != self.rank and s not in got]
        dead = [s for s in missing if not _alive(self.pids[s])]
        if dead or time.monotonic() > deadline:
            why = f"rank(s) {dead} exited" if dead else f"no word after {self.timeout_s:.0f} s"
            raise RuntimeError(
                f"shared-memory all-to-all, call {call} on rank {self.rank}: waiting for "
                f"rank(s) {missing}: {why}"
            )

    def close(self) -> None:
        """Unlink this rank's segments, close everything (idempotent)."""
        self._finalizer()


def _release(
    own: list[shared_memory.SharedMemory],
    retired: list[tuple[int, shared_memory.SharedMemory]],
    peers: dict[Any, shared_memory.SharedMemory],
    fds: list[int],
    fifo: Path,
) -> None:
    for seg in [*own, *(seg for _, seg in retired)]:
        with contextlib.suppress(BufferError):  # a view still alive (a traceback's frame)
            seg.close()
        seg.unlink()
    own.clear()
    retired.clear()
    for seg in peers.values():
        with contextlib.suppress(BufferError):
            seg.close()
    peers.clear()
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    fifo.unlink(missing_ok=True)


def _host() -> str:
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}"


def local_exchange(
    group: dist.ProcessGroup | None, device: torch.device, timeout_s: float = 1800.0
) -> SharedMemoryAllToAll | None:
    """A :class:`SharedMemoryAllToAll` for ``group`` (collective), or None where it cannot
    serve: not CPU, one rank, ranks on several hosts, ``RECIS_SHM_EXCHANGE=0``, or a rank
    that cannot open the others' segments, FIFOs or processes. Every rank gets the same
    answer."""
    if device.type != "cpu" or not dist.is_initialized():
        return None
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    if world == 1:
        return None
    wanted = os.environ.get("RECIS_SHM_EXCHANGE", "1") != "0"
    me = {"host": _host(), "pid": os.getpid(), "wanted": wanted}
    every: list[Any] = [None] * world
    dist.all_gather_object(every, me, group=group)
    if not all(e["wanted"] for e in every) or len({e["host"] for e in every}) > 1:
        return None
    box = [uuid.uuid4().hex[:12]]
    first = 0 if group is None else dist.get_global_rank(group, 0)
    dist.broadcast_object_list(box, src=first, group=group)
    pids = [e["pid"] for e in every]
    ex: SharedMemoryAllToAll | None = None
    ok = True
    try:
        ex = SharedMemoryAllToAll(rank, world, box[0], pids, timeout_s)
    except OSError:
        ok = False
    oks: list[Any] = [None] * world
    dist.all_gather_object(oks, ok, group=group)
    if all(oks):
        assert ex is not None
        try:
            ex._open_peers()
            ok = all(_alive(p) for p in pids)
        except OSError:
            ok = False
        dist.all_gather_object(oks, ok, group=group)
    if ex is not None:
        ex._fifo.unlink(missing_ok=True)  # every rank has opened it (or given up): no leak
    if not all(oks):
        if ex is not None:
            ex.close()
        return None
    return ex
