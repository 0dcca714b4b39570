"""Sharded checkpoints with torch.distributed.checkpoint (DCP).

Every rank writes its own shards (no gather to rank 0), and a checkpoint saved by N
ranks loads into M ranks with any other sharding plan, or into an unsharded model in
one process: DCP reads the parts of each saved shard that overlap what the loading rank
owns. Replicated tensors (dense parameters, their optimizer state) are written once.

Layout: ``<path>/`` holds DCP's ``.metadata`` and ``__<rank>_*.distcp`` files,
``meta.json`` (step, epoch, world size, LR schedule) and ``ranks.json``: what differs per
rank and is not a tensor (each rank's reader position, RNG states), keyed by rank,
gathered to rank 0. Writes go to ``.tmp-<name>`` first; after every rank has finished,
rank 0 writes ``manifest.json`` (size and sha256 of every file) last and renames the
folder, so a crash mid-save leaves the previous checkpoint whole.

DCP's own reader unpickles ``.metadata`` (``pickle.load``) and loads the non-tensor items
of the ``.distcp`` files with ``torch.load(weights_only=False)``: a tampered file would run
code. :func:`load` verifies the manifest before DCP opens any file (a file that differs
from what recis wrote is refused first), and then reads through
:mod:`recis.distributed.dcp_safe`: ``.metadata`` through an unpickler that builds only
DCP's metadata classes and plain torch types, non-tensor items with ``weights_only=True``.
So even a tampered folder whose manifest was rewritten to match runs no code.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper

from recis.errors import CheckpointError
from recis.train.checkpoint import fsync_dir, read_json_object, verify, write_file, write_manifest
from recis.train.model_api import ContentSized

from .dcp_safe import SafeLoadPlanner, SafeReader

_META = "meta.json"
_RANKS = "ranks.json"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _gather_to_main(value: Any) -> list[Any]:
    """Every rank's ``value`` in rank order (meaningful on rank 0; collective)."""
    if not dist.is_initialized():
        return [value]
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, value)
    return every


def save(
    path: str | Path,
    model: nn.Module,
    optimizer: Any | None,
    meta: dict[str, Any],
    rank_state: dict[str, Any] | None = None,
) -> Path:
    """Save ``model`` (and ``optimizer``, a torchrec KeyedOptimizer) to the folder ``path``.

    Args:
        meta: JSON-serializable, the same on every rank (rank 0's is written).
        rank_state: JSON-serializable state of this rank (reader position...), written
            with every other rank's into ``ranks.json`` under its rank.

    Collective: every rank calls it.
    """
    path = Path(path)
    tmp = path.parent / f".tmp-{path.name}"
    if _rank() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    _barrier()
    state: dict[str, Any] = {"model": model.state_dict()}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    try:
        dcp.save(state, checkpoint_id=str(tmp))
    # a write error (disk full) on any rank reaches every rank as DCP's CheckpointException
    except (OSError, dcp.api.CheckpointException) as err:
        if _rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        lines = str(err).strip().splitlines() or [type(err).__name__]
        why = err.strerror if isinstance(err, OSError) else lines[0]
        raise CheckpointError(f"{tmp}: cannot write checkpoint: {why}") from None
    ranks = _gather_to_main(rank_state) if rank_state is not None else None
    _barrier()
    if _rank() == 0:
        _publish(tmp, path, meta, ranks)
    _barrier()
    return path


def _publish(tmp: Path, path: Path, meta: dict[str, Any], ranks: list[Any] | None) -> None:
    """Rank 0, once every rank's shards are in ``tmp``: meta.json, ranks.json and the
    manifest written (fsynced), then ``tmp`` renamed to ``path`` (the old one set aside first
    and removed last)."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    full_meta = {**meta, "world_size": world, "time": time.time()}
    try:
        # fsynced files and folders, as the single-process writer's: a power loss after
        # the rename never leaves a manifest naming files that did not reach the disk
        if ranks is not None:
            text = json.dumps({str(r): v for r, v in enumerate(ranks)}) + "\n"
            write_file(tmp / _RANKS, text.encode())
        write_file(tmp / _META, (json.dumps(full_meta, indent=2) + "\n").encode())
        write_manifest(tmp)  # last: a folder with a manifest is whole
        fsync_dir(tmp)
        old = path.parent / f".old-{path.name}"
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
        tmp.rename(path)
        fsync_dir(path.parent)
        shutil.rmtree(old, ignore_errors=True)
    except CheckpointError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"{tmp}: cannot write checkpoint: {err.strerror}") from None


def load(path: str | Path, model: nn.Module, optimizer: Any | None = None) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save` (at any world size) into ``model`` and
    ``optimizer`` in place; returns its meta. Collective when a process group is up."""
    path = Path(path)
    verify(path)  # before DCP reads (and unpickles) anything
    if not (path / ".metadata").is_file():
        raise CheckpointError(f"{path}: not a distributed checkpoint (no .metadata)")
    meta = read_json_object(path / _META)
    if optimizer is not None:
        _init_optimizer_state(optimizer)
    resharding = _prepare_resharding(path, model)
    try:
        state: dict[str, Any] = {"model": model.state_dict()}
        if optimizer is not None:
            state["optimizer"] = optimizer.state_dict()
        dcp.load(state, storage_reader=SafeReader(str(path)), planner=SafeLoadPlanner())
    # missing keys, shape mismatch: say which checkpoint (DCP raises CheckpointException,
    # a BaseException, when it plans or reads)
    except (Exception, dcp.api.CheckpointException) as err:
        for m in resharding:
            m.prepare_load(None)
        raise CheckpointError(f"{path}: cannot load checkpoint: {err}") from None
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    return meta


def load_rank_state(path: str | Path, rank: int, world_size: int) -> dict[str, Any] | None:
    """This rank's entry of ``ranks.json`` in checkpoint ``path``, or None when the checkpoint
    has none or was saved at another world size (then positions do not map rank to rank)."""
    path = Path(path)
    meta = read_json_object(path / _META)
    if int(meta.get("world_size", 1)) != world_size or not (path / _RANKS).is_file():
        return None
    ranks = read_json_object(path / _RANKS)
    return ranks.get(str(rank))


def _prepare_resharding(path: Path, model: nn.Module) -> list[Any]:
    """Tell modules whose saved tensors are sized by content, not by the world size (the
    hashed engine's live rows), the sizes in the checkpoint, so their state dict is a
    template DCP can load into."""
    found = [m for m in model.modules() if isinstance(m, ContentSized)]
    if found:
        saved = SafeReader(str(path)).read_metadata().state_dict_metadata
        sizes = {k: v.size for k, v in saved.items() if isinstance(v, TensorStorageMetadata)}
        for m in found:
            m.prepare_load(sizes, root="model.")
    return found


def _init_optimizer_state(optimizer: Any) -> None:
    """Create lazy optimizer state (Adam moments...) so DCP can load into it in place.

    torchrec's ``init_state`` takes one step with zero gradients; fused (in-backward)
    optimizers already hold their state and are skipped.
    """
    parts = (
        [o for _, o in optimizer.optimizers]
        if isinstance(optimizer, CombinedOptimizer)
        else [optimizer]
    )
    for part in parts:
        if isinstance(part, KeyedOptimizerWrapper):
            part.init_state()
            part.zero_grad(set_to_none=True)


def latest(checkpoints: str | Path) -> Path | None:
    """The newest numbered checkpoint ``step-N`` under ``checkpoints``, whole or not: only
    whole folders are ever renamed to that name, so a broken one is damage, and
    :func:`load` refuses it by name rather than passing it over for an older one."""
    root = Path(checkpoints)
    if not root.is_dir():
        return None
    found = [d for d in root.iterdir() if re.fullmatch(r"step-\d+", d.name) and d.is_dir()]
    return max(found, key=lambda d: int(d.name[5:])) if found else None
