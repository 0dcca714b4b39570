"""Process-group setup for torchrun (torch.distributed) and Horovod launches.

The launcher's environment is read here, once, into a :class:`DistContext`; models,
readers and the trainer get the context (or rank/world size) as arguments and never
read ``RANK`` / ``WORLD_SIZE`` themselves.

Horovod: torchrec's sharded modules exchange embeddings through torch.distributed
collectives (``KJTAllToAll``, ``PooledEmbeddingsAllToAll``) on a ``ProcessGroup``; a
Horovod communicator cannot stand in for one. So under Horovod we keep Horovod for
what it is used for (it spawns and ranks the workers, and reduces dense gradients with
``hvd.DistributedOptimizer``) and build a torch.distributed gloo/nccl group from
``hvd.rank()`` / ``hvd.size()`` for the embedding all-to-alls. Rank 0 opens a
``TCPStore`` on a free port and broadcasts its address with ``hvd.broadcast_object``,
so no extra port has to be agreed on by hand.
"""

from __future__ import annotations

import gc
import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import torch
import torch.distributed as dist

from recis.errors import ConfigError
from recis.ops.cores import processes_on_node

Launcher = Literal["none", "torchrun", "horovod"]

HOROVOD_MISSING = (
    "--launcher horovod: Horovod is not installed in this environment. Build and install it "
    "with `make horovod` (or `scripts/build_horovod.sh .venv/bin/python`): it compiles "
    "horovod 0.28.1 with Gloo against this torch (~6 min once, then cached in "
    "~/.cache/recis/wheels)"
)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a run.

    Attributes:
        rank: global rank in ``[0, world_size)``.
        world_size: number of processes.
        local_rank: rank on this node (selects the GPU under nccl).
        device: this process's device (``cuda:<local_rank>`` under nccl).
        backend: torch.distributed backend (``gloo`` or ``nccl``), ``""`` when single-process.
        launcher: ``none``, ``torchrun`` or ``horovod``.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str = ""
    launcher: Launcher = "none"

    @property
    def is_distributed(self) -> bool:
        """True when a torch.distributed process group is up (even with one process)."""
        return self.launcher != "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def local_size(self) -> int:
        """Processes of this run on this node (torchrun and horovodrun both export it)."""
        return processes_on_node() or self.world_size


def detect_launcher() -> Launcher:
    """Which launcher started this process, from its environment (``--launcher auto``)."""
    if "HOROVOD_RANK" in os.environ or "OMPI_COMM_WORLD_RANK" in os.environ:
        return "horovod"
    if "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ):
        return "torchrun"
    return "none"


def _device_and_backend(
    device: str | torch.device, backend: str, local_rank: int
) -> tuple[torch.device, str]:
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)  # one GPU per process
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend == "nccl" and dev.type != "cuda":
        raise ConfigError(f"distributed.backend: nccl needs a CUDA device, got device {dev}")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev, backend


def init_distributed(
    launcher: str = "auto",
    device: str | torch.device = "cpu",
    backend: str = "auto",
    timeout_s: float = 300.0,
) -> DistContext:
    """Join (or create) the process group for ``launcher`` and return this process's context.

    Args:
        launcher: ``none`` (single process), ``torchrun`` (env:// rendezvous set up by
            torchrun), ``horovod`` (started by horovodrun) or ``auto`` (detect).
        device: the configured device; ``cuda`` becomes ``cuda:<local_rank>``.
        backend: ``gloo``, ``nccl`` or ``auto`` (nccl on CUDA, gloo on CPU).
        timeout_s: collective timeout.
    """
    if launcher == "auto":
        launcher = detect_launcher()
    if launcher == "none":
        return DistContext(device=torch.device(device))
    if launcher == "torchrun":
        missing = [
            k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ
        ]
        if missing:
            raise ConfigError(
                f"--launcher torchrun: {', '.join(missing)} not set; start with "
                "`torchrun --nproc-per-node N -m recis.cli train CONFIG`"
            )
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        dev, backend = _device_and_backend(device, backend, local_rank)
        if not dist.is_initialized():
            timeout = timedelta(seconds=timeout_s)
            store = _torchrun_store(rank, world, timeout)
            dist.init_process_group(
                backend, store=store, rank=rank, world_size=world, timeout=timeout
            )
        return DistContext(rank, world, local_rank, dev, backend, "torchrun")
    if launcher == "horovod":
        return _init_horovod(device, backend, timeout_s)
    raise ConfigError(f"--launcher: unknown launcher {launcher!r}; use none|torchrun|horovod|auto")


def _torchrun_store(rank: int, world: int, timeout: timedelta) -> dist.Store:
    """torchrun's rendezvous store, with keys private to this restart attempt.

    What ``env://`` does, plus a per-attempt prefix: torchrun's agent keeps its store
    across ``--max-restarts`` restarts, and without the prefix restarted ranks can read
    the dead attempt's gloo addresses and fail to connect ("Connection refused").
    """
    use_agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world,
        is_master=not use_agent_store and rank == 0,
        timeout=timeout,
        multi_tenant=True,
        wait_for_workers=False,
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"recis/attempt_{attempt}", store)


def import_horovod():  # -> module horovod.torch
    """``horovod.torch``, or a :class:`ConfigError` that says how to install it."""
    try:
        import horovod.torch as hvd
    except ImportError as err:
        raise ConfigError(f"{HOROVOD_MISSING} ({err})") from None
    return hvd


def _init_horovod(device: str | torch.device, backend: str, timeout_s: float) -> DistContext:
    hvd = import_horovod()
    # Horovod's background thread wakes every cycle to negotiate with the other ranks, even
    # with nothing to reduce: at its default 1 ms cycle that took 85-120 ms of CPU per second
    # per idle process here (2 ranks), 20-37 ms at 5 ms, CPU the training step on the same
    # cores loses. The dense gradients it reduces are ready early in backward, long before
    # the optimizer step waits for them, so a longer cycle costs no wait: on CPU, 10 ms
    # (2-rank DLRM benchmark: 4-10 CPU ms less per step than at 5 ms, the same optimizer-step
    # wait). GPU steps are short: Horovod's own default there. HOROVOD_CYCLE_TIME (or
    # horovodrun --cycle-time-ms) always wins.
    if torch.device(device).type == "cpu":
        os.environ.setdefault("HOROVOD_CYCLE_TIME", "10")
    hvd.init()
    rank, world, local_rank = hvd.rank(), hvd.size(), hvd.local_rank()
    dev, backend = _device_and_backend(device, backend, local_rank)
    if not dist.is_initialized():
        timeout = timedelta(seconds=timeout_s)
        if rank == 0:
            # horovodrun names hosts as the user wrote them in -H; those names reach rank 0
            host = os.environ.get("HOROVOD_HOSTNAME") or socket.gethostname()
            store = dist.TCPStore(
                host, 0, world, is_master=True, timeout=timeout, wait_for_workers=False
            )
            addr = (host, store.port)
        else:
            addr = None
        host, port = hvd.broadcast_object(addr, root_rank=0, name="recis.tcpstore")
        if rank != 0:
            store = dist.TCPStore(host, port, world, is_master=False, timeout=timeout)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
    return DistContext(rank, world, local_rank, dev, backend, "horovod")


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (and Horovod) cleanly.

    Drop your references to the wrapped model (and its trainer) first: DDP's reducer holds
    the process group, and a group left to die at interpreter exit aborts the process now
    and then ("terminate called without an active exception", exit code -6). The garbage
    collection here then releases it before the group is destroyed.
    """
    if ctx.is_distributed and dist.is_initialized():
        dist.barrier()
        gc.collect()
        dist.destroy_process_group()
    if ctx.launcher == "horovod":
        import_horovod().shutdown()
