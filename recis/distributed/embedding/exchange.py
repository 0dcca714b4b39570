"""The exchange between ranks: one interface, three transports, and the autograd functions
that carry rows and their gradients through it.

An :class:`Exchange` is ``all_to_all_single`` with uneven splits along dim 0, blocking
(:meth:`Exchange.all_to_all`) or started to finish later (:meth:`Exchange.start`):

- :class:`ProcessGroupExchange`: a torch.distributed group (gloo on CPU, nccl on CUDA;
  under Horovod the group built from Horovod's rank and size,
  :mod:`recis.distributed.context`); :meth:`~Exchange.start` runs in the background;
- :class:`~recis.distributed.shm.SharedMemoryAllToAll`: the ranks of one host through
  shared memory (blocking only);
- :class:`HorovodExchange`: Horovod's own ``alltoall`` (background like the process group).

Calls are collectives: every rank makes the same calls in the same order.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "Exchange",
    "HorovodExchange",
    "Links",
    "Loopback",
    "ProcessGroupExchange",
    "exchange_rows",
    "inverse_permutation",
    "links",
    "permute_rows",
]


class Exchange(abc.ABC):
    """All-to-all of rows between the ``world`` ranks of one run.

    ``send[d]``: rows of ``x`` (in rank order) for rank ``d``; ``recv[s]``: rows that rank
    ``s`` sends here, which land in rank order in the result.
    """

    rank: int
    world: int

    @abc.abstractmethod
    def all_to_all(
        self, out: torch.Tensor, x: torch.Tensor, recv: list[int], send: list[int]
    ) -> None:
        """Blocking: ``out`` ``[sum(recv), ...]`` receives; ``x`` ``[sum(send), ...]`` is sent."""

    #: Whether :meth:`start` returns before the transfer is done (it then overlaps with
    #: whatever the caller computes before asking for the result).
    background: bool = False

    def start(
        self, x: torch.Tensor, send: list[int], recv: list[int]
    ) -> Callable[[], torch.Tensor]:
        """Start the all-to-all of ``x``; the returned function gives what arrived
        (``[sum(recv), ...]``, on ``x``'s device). Here: done at once."""
        out = x.new_empty((sum(recv), *x.shape[1:]))
        self.all_to_all(out, x.contiguous(), recv, send)
        return lambda: out

    def __call__(
        self, out: torch.Tensor, x: torch.Tensor, recv: list[int], send: list[int]
    ) -> None:
        self.all_to_all(out, x, recv, send)


class ProcessGroupExchange(Exchange):
    """The all-to-all of a torch.distributed process group (:meth:`start` in the background).

    Args:
        group: the group (None: the default group).
        device: where the transfer runs (nccl takes only CUDA tensors); results come back
            on the input's device.
    """

    background = True

    def __init__(self, group: dist.ProcessGroup | None, device: torch.device) -> None:
        self.group, self.device = group, device
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)

    def all_to_all(
        self, out: torch.Tensor, x: torch.Tensor, recv: list[int], send: list[int]
    ) -> None:
        dist.all_to_all_single(out, x, recv, send, group=self.group)

    def start(
        self, x: torch.Tensor, send: list[int], recv: list[int]
    ) -> Callable[[], torch.Tensor]:
        src = x.to(self.device).contiguous()
        out = src.new_empty((sum(recv), *x.shape[1:]))
        work = dist.all_to_all_single(out, src, recv, send, group=self.group, async_op=True)

        def result() -> torch.Tensor:  # the work holds ``src`` until it is done
            work.wait()
            return out.to(x.device)

        return result


class HorovodExchange(Exchange):
    """Horovod's ``alltoall`` (the process set of every rank); Horovod must be initialized."""

    background = True

    def __init__(self) -> None:
        from recis.distributed.context import import_horovod

        self.hvd = import_horovod()
        self.rank, self.world = self.hvd.rank(), self.hvd.size()

    def all_to_all(
        self, out: torch.Tensor, x: torch.Tensor, recv: list[int], send: list[int]
    ) -> None:
        out.copy_(self.start(x, send, recv)())

    def start(
        self, x: torch.Tensor, send: list[int], recv: list[int]
    ) -> Callable[[], torch.Tensor]:
        splits = torch.tensor(send, dtype=torch.int32)
        handle = self.hvd.alltoall_async(x.contiguous(), splits=splits)

        def result() -> torch.Tensor:
            got: Any = self.hvd.synchronize(handle)
            got = got[0] if isinstance(got, tuple) else got  # (rows, received splits)
            return got.reshape(sum(recv), *x.shape[1:])

        return result


class _ExchangeRows(torch.autograd.Function):
    """All-to-all of rows through an :class:`Exchange` (blocking); backward sends the
    gradient back the same way, times ``scale``."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, send: list[int], recv: list[int], ex: Exchange, scale: float
    ) -> torch.Tensor:
        ctx.send, ctx.recv, ctx.ex, ctx.scale = send, recv, ex, scale
        out = x.new_empty((sum(recv), *x.shape[1:]))
        ex.all_to_all(out, x.contiguous(), recv, send)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        out = grad.new_empty((sum(ctx.send), *grad.shape[1:]))
        ctx.ex.all_to_all(out, grad.contiguous(), ctx.send, ctx.recv)
        return out * ctx.scale, None, None, None, None


def exchange_rows(
    x: torch.Tensor, send: list[int], recv: list[int], ex: Exchange, scale: float = 1.0
) -> torch.Tensor:
    """``x`` ``[sum(send), ...]`` exchanged through ``ex`` (``[sum(recv), ...]``), with
    autograd: the gradient goes back the same way, times ``scale``."""
    out: torch.Tensor = _ExchangeRows.apply(x, send, recv, ex, scale)
    return out


class _Permute(torch.autograd.Function):
    """``x[perm]`` for a permutation ``perm`` of ``x``'s rows; backward gathers by the
    inverse permutation (no zero fill, no scatter-add as for a general index)."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, perm: torch.Tensor, inverse: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        return x[perm]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (inverse,) = ctx.saved_tensors
        return grad[inverse], None, None


def permute_rows(x: torch.Tensor, perm: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """``x[perm]`` for a permutation ``perm`` (``inverse``: its inverse), with a gather
    in backward too."""
    out: torch.Tensor = _Permute.apply(x, perm, inverse)
    return out


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    """The inverse of the permutation ``perm`` (int64 ``[N]``)."""
    out = torch.empty_like(perm)
    out[perm] = torch.arange(perm.numel(), device=perm.device)
    return out


class Loopback(Exchange):
    """One rank: what is sent arrives (the routing code run in one process)."""

    rank, world = 0, 1

    def all_to_all(
        self, out: torch.Tensor, x: torch.Tensor, recv: list[int], send: list[int]
    ) -> None:
        out.copy_(x)

    def start(
        self, x: torch.Tensor, send: list[int], recv: list[int]
    ) -> Callable[[], torch.Tensor]:
        return lambda: x


@dataclasses.dataclass(frozen=True)
class Links:
    """The transports of one sharded collection.

    Attributes:
        world: ranks.
        rows: the step's exchanges (rows forward, gradients backward, ids to the ranks of
            whole tables): shared memory between the ranks of one host, else ``control``.
        control: counts, and rows of state being loaded (a process group).
    """

    world: int
    rows: Exchange
    control: Exchange

    def exchange(
        self, x: torch.Tensor, send: list[int], recv: list[int], scale: float = 1.0
    ) -> torch.Tensor:
        """:func:`exchange_rows` through ``rows`` (one rank: ``x`` itself)."""
        if self.world == 1:
            return x
        return exchange_rows(x, send, recv, self.rows, scale)

    def counts(self, send: torch.Tensor) -> torch.Tensor:
        """Row ``r`` of ``send`` ``[W, ...]`` to rank ``r``; row ``s`` of the result came
        from rank ``s`` (through ``control``)."""
        ones = [1] * self.world
        return self.control.start(send, ones, ones)()


def links(
    world: int, group: dist.ProcessGroup | None, device: torch.device, rows: Exchange | None
) -> Links:
    """The :class:`Links` of a collection over ``world`` ranks: ``rows`` (None: the
    process group's exchange) and the process group of ``group``."""
    if world == 1:
        return Links(1, Loopback(), Loopback())
    control = ProcessGroupExchange(group, device)
    return Links(world, rows or control, control)
