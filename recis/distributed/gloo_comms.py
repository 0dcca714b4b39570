"""Reduce-scatter on gloo as an all-to-all, for torchrec's pooled-embedding output dist.

Row-wise (and table-row-wise) sharded tables send their partial pooled embeddings
``[W*B, F*D]`` through ``dist.reduce_scatter_tensor`` in forward (torchrec ``comm_ops``
``ReduceScatterBase_Req``). gloo has no native reduce-scatter: it all-reduces the whole
input and keeps one chunk, moving about twice the bytes a reduce-scatter needs. A
reduce-scatter is an all-to-all of equal chunks ("send chunk ``j`` to rank ``j``") plus a
local sum of what arrived. Measured with 2 processes for the 6.8 MB of the benchmark's
DLRM step on the shared 2-core machine (load ~4): 12.5-16.4 ms wall / 6.5-7.5 ms CPU for
gloo's, 7.5-7.6 ms wall / 3.7-4.2 ms CPU for the all-to-all (docs/distributed.md).
The sum runs over ranks in rank order, so with 2 ranks the result is bitwise gloo's
(``a + b``). (The backward all-gather gained nothing done the same way: left to gloo.)

:func:`install` swaps the function in for torchrec's ``comm_ops`` module only (its
``dist`` name) and for gloo groups only; NCCL groups and every other caller are untouched.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.distributed as dist
from torchrec.distributed import comm_ops


def _is_gloo(group: dist.ProcessGroup | None) -> bool:
    return dist.get_backend(group) == "gloo"


class _SumOnWait:
    """A ``dist.Work`` for a reduce-scatter done as an all-to-all: waiting sums the chunks.

    ``received`` is ``[W, ...]`` (chunk ``s`` from rank ``s``); the sum lands in ``output``.
    """

    def __init__(self, work: Any, received: torch.Tensor, output: torch.Tensor) -> None:
        self.work, self.received, self.output = work, received, output
        self.done = False

    def wait(self, timeout: Any = None) -> bool:
        if not self.done:
            self.work.wait() if timeout is None else self.work.wait(timeout)
            torch.sum(self.received, dim=0, out=self.output)
            self.done = True
        return True

    def is_completed(self) -> bool:
        return self.done or self.work.is_completed()


def reduce_scatter_tensor(
    output: torch.Tensor,
    input: torch.Tensor,
    op: Any = dist.ReduceOp.SUM,
    group: dist.ProcessGroup | None = None,
    async_op: bool = False,
) -> Any:
    """``dist.reduce_scatter_tensor`` (sum over ranks of chunk ``rank`` of ``input`` [W*n, ...]
    into ``output`` [n, ...]) as one all-to-all plus a local sum on gloo."""
    if not _is_gloo(group) or op != dist.ReduceOp.SUM:
        return dist.reduce_scatter_tensor(output, input, op=op, group=group, async_op=async_op)
    world = dist.get_world_size(group)
    received = input.new_empty((world, *output.shape))
    work = dist.all_to_all_single(received, input.contiguous(), group=group, async_op=True)
    result = _SumOnWait(work, received, output)
    if async_op:
        return result
    result.wait()
    return None


class _DistWithGlooAllToAll(types.ModuleType):
    """``torch.distributed`` for torchrec's comm_ops, with the reduce-scatter above."""

    def __init__(self) -> None:
        super().__init__("torch.distributed")
        self.reduce_scatter_tensor = reduce_scatter_tensor

    def __getattr__(self, name: str) -> Any:
        return getattr(dist, name)


def install() -> None:
    """Route torchrec's pooled-embedding reduce-scatter through an all-to-all on gloo groups
    (idempotent; other backends keep torch's collectives)."""
    if not isinstance(comm_ops.dist, _DistWithGlooAllToAll):
        comm_ops.dist = _DistWithGlooAllToAll()


def uninstall() -> None:
    """Back to torch's own collectives (for side-by-side measurements)."""
    comm_ops.dist = dist
