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


def _publish(tmp: Path, path: Path) -> Path:
    """Make the complete folder ``tmp`` visible as ``path`` by renames, replacing any old one."""
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
    return _publish(tmp, path)


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


def is_complete(path: Path) -> bool:
    """Whether ``path`` is a finished checkpoint folder (both files present)."""
    return (path / _STATE).is_file() and (path / _META).is_file()


class CheckpointManager:
    """Numbered checkpoints ``step-00000100`` in one folder, keeping the last ``keep_last``.

    Each is written by :func:`save_checkpoint` under a fresh name, so no
    complete checkpoint is ever renamed or overwritten while a new one is
    being written: a process killed mid-write (even by SIGKILL) leaves a
    ``.tmp-*`` folder, which :meth:`latest` ignores and the next manager removes.

    Args:
        directory: the checkpoints folder (``run_dir/checkpoints``).
        keep_last: how many numbered checkpoints to keep.
    """

    def __init__(self, directory: str | Path, keep_last: int = 3) -> None:
        self.directory = Path(directory)
        self.keep_last = keep_last

    def clean_partial(self) -> None:
        """Remove ``.tmp-*`` / ``.old-*`` leftovers of crashed writers (call once, on one rank)."""
        if not self.directory.is_dir():
            return
        for p in self.directory.iterdir():
            if p.name.startswith((".tmp-", ".old-")) and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)

    def checkpoints(self) -> list[Path]:
        """Complete numbered checkpoints, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [
            p
            for p in self.directory.iterdir()
            if p.name.startswith("step-") and p.name[5:].isdigit() and is_complete(p)
        ]
        return sorted(found, key=lambda p: int(p.name[5:]))

    def latest(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def save(self, step: int, state: dict[str, Any], meta: dict[str, Any]) -> Path:
        """Write checkpoint ``step`` atomically, then drop the oldest beyond ``keep_last``."""
        path = save_checkpoint(self.directory / f"step-{step:08d}", state, meta)
        for old in self.checkpoints()[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        return path


def link_checkpoint(source: Path, name: str) -> Path:
    """Make ``source.parent / name`` a copy of checkpoint ``source`` made of hard links.

    Costs no disk space; built under a temporary name and renamed like any
    checkpoint (``final`` is kept this way beside the numbered ones).
    """
    path = source.parent / name
    tmp = source.parent / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for f in source.iterdir():
        try:
            os.link(f, tmp / f.name)
        except OSError:  # file system without hard links
            shutil.copy2(f, tmp / f.name)
    return _publish(tmp, path)


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The newest complete checkpoint of a run directory, or :class:`CheckpointError`."""
    path = CheckpointManager(Path(run_dir) / "checkpoints").latest()
    if path is None:
        raise CheckpointError(f"{run_dir}: no complete checkpoint under checkpoints/")
    return path
