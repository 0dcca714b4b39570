"""Atomic checkpoints: written under a temporary name, then renamed.

A crash mid-write leaves only a ``.tmp-*`` folder behind; the previous
checkpoint stays complete and loadable.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from recis.errors import CheckpointError

_STATE = "state.pt"
_META = "meta.json"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(path: str | Path, state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write ``state`` (torch-serializable) and ``meta`` (JSON) to the folder ``path``, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    with open(tmp / _STATE, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    (tmp / _META).write_text(json.dumps(meta, indent=2) + "\n")
    _fsync_dir(tmp)
    old = None
    if path.exists():
        old = path.parent / f".old-{path.name}-{os.getpid()}"
        path.rename(old)
    tmp.rename(path)
    _fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old)
    return path


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[dict, dict]:
    """Read a checkpoint folder written by :func:`save_checkpoint`: ``(state, meta)``."""
    path = Path(path)
    if not (path / _STATE).is_file() or not (path / _META).is_file():
        raise CheckpointError(f"{path}: not a complete checkpoint (need {_STATE} and {_META})")
    try:
        meta = json.loads((path / _META).read_text())
        state = torch.load(path / _STATE, map_location=map_location, weights_only=False)
    except Exception as err:  # corrupt file: say which
        raise CheckpointError(f"{path}: cannot load checkpoint: {err}") from None
    return state, meta
