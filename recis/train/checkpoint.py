"""Verified, atomic checkpoints that load without unpickling anything.

A checkpoint is a folder:

- ``<part>.safetensors``: the tensors of each top-level part of the state
  (``model``, ``optimizers``, ``rng``...), in safetensors;
- ``state.json``: everything else, in tagged JSON (:mod:`recis.train.statecodec`),
  with a reference in place of each tensor;
- ``meta.json``: step, epoch, time;
- ``manifest.json``, written last: the size and sha256 of every other file.

It is written under a temporary name (``.tmp-*``), every file fsynced, the manifest
last, then renamed into place: a process killed at any moment leaves only a ``.tmp-*``
folder, and the previous checkpoint stays the newest complete one. Loading checks the
manifest before reading anything else: a missing, changed, truncated or extra file is a
:class:`~recis.errors.CheckpointError` naming it. Nothing on the load path unpickles.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from recis.errors import CheckpointError

from .statecodec import decode, encode

MANIFEST = "manifest.json"
_STATE = "state.json"
_META = "meta.json"
_FORMAT = "recis-checkpoint"
_VERSION = 1
_PART = re.compile(r"^[A-Za-z0-9_-]+$")
_STEP = re.compile(r"^step-(\d+)$")
_CHUNK = 1 << 20


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes) -> dict[str, Any]:
    """Write ``data`` to ``path`` and fsync it; its manifest entry (size, sha256).

    A write error (disk full, file too large, I/O error) is a CheckpointError naming
    the file."""
    try:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise CheckpointError(f"{path}: cannot write checkpoint file: {err.strerror}") from None
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def file_entry(path: Path) -> dict[str, Any]:
    """Size and sha256 of the file ``path`` (read in chunks)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


def write_manifest(folder: Path, files: dict[str, dict[str, Any]] | None = None) -> None:
    """Write ``folder/manifest.json`` (fsynced) listing ``files`` (name -> size, sha256);
    without ``files``, every file now in ``folder`` is hashed (the distributed writer's
    case: each rank wrote its own)."""
    if files is None:
        files = {p.name: file_entry(p) for p in sorted(folder.iterdir()) if p.name != MANIFEST}
    body = {"format": _FORMAT, "version": _VERSION, "files": files, "self": _self_sum(files)}
    write_file(folder / MANIFEST, (json.dumps(body, indent=1, sort_keys=True) + "\n").encode())


def _self_sum(files: Any) -> str:
    """The manifest's own checksum (of its file list): a damaged manifest is told apart
    from a damaged file."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def verify(path: str | Path) -> dict[str, dict[str, Any]]:
    """Check checkpoint folder ``path`` against its manifest before anything reads it.

    Returns the manifest's files. A missing manifest or file, a size or sha256 that
    differs, or a file the manifest does not list is a CheckpointError naming the file.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint folder")
    mpath = path / MANIFEST
    if not mpath.is_file():
        old = (
            " (a pickle checkpoint of an older recis: not loaded)"
            if (path / "state.pt").exists()
            else ""
        )
        raise CheckpointError(f"{mpath}: missing: not a complete recis checkpoint{old}")
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
        ok = manifest.get("format") == _FORMAT and isinstance(files, dict)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError, OSError):
        ok = False
    if not ok:
        raise CheckpointError(f"{mpath}: not a valid recis checkpoint manifest")
    if manifest.get("version") != _VERSION:
        raise CheckpointError(f"{mpath}: checkpoint format version {manifest.get('version')!r}")
    if manifest.get("self") != _self_sum(files):
        raise CheckpointError(f"{mpath}: corrupted (its own checksum differs)")
    for name, want in files.items():
        if "/" in name or name in ("", ".", "..") or not isinstance(want, dict):
            raise CheckpointError(f"{mpath}: invalid entry {name!r}")
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f}: missing (listed in {MANIFEST})")
        try:
            got = file_entry(f)
        except OSError as err:
            raise CheckpointError(f"{f}: cannot read: {err.strerror}") from None
        if got["size"] != want.get("size"):
            raise CheckpointError(
                f"{f}: {got['size']} bytes, the manifest says {want.get('size')}: "
                "truncated or changed"
            )
        if got["sha256"] != want.get("sha256"):
            raise CheckpointError(f"{f}: contents differ from the manifest (sha256): corrupted")
    for f in path.iterdir():
        if f.name != MANIFEST and f.name not in files:
            raise CheckpointError(f"{f}: not part of the checkpoint (not in {MANIFEST})")
    return files


_DTYPES = {dtype: name for name, dtype in safetensors.torch._TYPES.items()}


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Write ``tensors`` to ``path`` in the safetensors format, streaming each tensor's
    bytes to the file and to sha256 (no serialized copy of the whole part in memory);
    fsynced. Its manifest entry (size, sha256); a write error names the file.

    The file is read back by ``safetensors.torch.load_file``, whose parser validates the
    header and offsets."""
    blobs: list[memoryview] = []
    header: dict[str, Any] = {}
    offset = 0
    for key, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        if t.dtype not in _DTYPES:
            raise CheckpointError(f"{key}: tensors of dtype {t.dtype} cannot be checkpointed")
        # raw bytes, in the machine's (little-endian) order, without a copy
        raw = t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else memoryview(b"")
        size = raw.nbytes
        header[key] = {
            "dtype": _DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        blobs.append(raw)
        offset += size
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    digest = hashlib.sha256()
    try:
        with open(path, "wb") as f:
            chunks: list[bytes | memoryview] = [len(head).to_bytes(8, "little"), head, *blobs]
            for chunk in chunks:
                digest.update(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise CheckpointError(f"{path}: cannot write checkpoint file: {err.strerror}") from None
    return {"size": 8 + len(head) + offset, "sha256": digest.hexdigest()}


def save_checkpoint(path: str | Path, state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write ``state`` and ``meta`` (JSON) to the folder ``path``, atomically.

    ``state``: a dict of parts (``model``, ``optimizers``...), each a tree of dicts,
    lists and tuples of tensors, numbers, strings and numpy arrays. A write error is a
    CheckpointError naming the file, and leaves no partial checkpoint behind.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointError(f"{path.parent}: cannot create: {err.strerror}") from None
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        files = _write_parts(tmp, state, meta)
        write_manifest(tmp, files)
        fsync_dir(tmp)
        return _publish(tmp, path)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"{tmp}: cannot write checkpoint: {err.strerror}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_parts(tmp: Path, state: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    files: dict[str, dict[str, Any]] = {}
    tree: dict[str, Any] = {}
    for part, value in state.items():
        if not isinstance(part, str) or not _PART.match(part):
            raise CheckpointError(f"checkpoint part {part!r}: use letters, digits, _ and -")
        tensors: dict[str, torch.Tensor] = {}
        tree[part] = encode(value, tensors, part)
        if tensors:
            name = f"{part}.safetensors"
            files[name] = _write_tensors(tmp / name, tensors)
    files[_STATE] = write_file(tmp / _STATE, (json.dumps(tree) + "\n").encode())
    meta_json = json.loads(json.dumps(encode(meta, {}, "meta")))
    files[_META] = write_file(tmp / _META, (json.dumps(meta_json, indent=2) + "\n").encode())
    return files


def _publish(tmp: Path, path: Path) -> Path:
    """Make the complete folder ``tmp`` visible as ``path`` by renames, replacing any old one."""
    old = None
    if path.exists():
        old = path.parent / f".old-{path.name}-{os.getpid()}"
        path.rename(old)
    tmp.rename(path)
    fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[dict, dict]:
    """Read a checkpoint folder written by :func:`save_checkpoint`: ``(state, meta)``.

    The manifest is verified first; then tensors come from safetensors and the rest from
    JSON. Any fault is a CheckpointError naming the file (and, inside a run's
    ``checkpoints/``, the older checkpoints one can resume from instead).
    """
    path = Path(path)
    try:
        verify(path)
        if (path / ".metadata").exists() and not (path / _STATE).exists():
            raise CheckpointError(
                f"{path}: a distributed (DCP) checkpoint: resume it under a launcher "
                "(torchrun --nproc-per-node N -m recis.cli train ... --resume), evaluate it "
                "with recis eval"
            )
        return _read(path, str(torch.device(map_location)))
    except CheckpointError as err:
        raise CheckpointError(f"{err}{_older_hint(path)}") from None
    except RecursionError:  # JSON nested past Python's limit: not written by recis
        raise CheckpointError(f"{path / _STATE}: nested too deeply") from None


def _read(path: Path, device: str) -> tuple[dict, dict]:
    parts: dict[str, dict[str, torch.Tensor]] = {}

    def tensor(key: str) -> torch.Tensor:
        part = key.split("/", 1)[0]
        if part not in parts:
            f = path / f"{part}.safetensors"
            if not _PART.match(part) or not f.is_file():
                raise CheckpointError(f"{path / _STATE}: refers to a missing tensor file {f.name}")
            try:
                parts[part] = safetensors.torch.load_file(f, device=device)
            except Exception as err:  # safetensors' own error type: a corrupt header
                raise CheckpointError(f"{f}: not a valid safetensors file: {err}") from None
        if key not in parts[part]:
            raise CheckpointError(f"{path / f'{part}.safetensors'}: has no tensor {key!r}")
        return parts[part][key]

    state = decode(read_json_object(path / _STATE), tensor, str(path / _STATE))
    meta = decode(read_json_object(path / _META), tensor, str(path / _META))
    if not isinstance(state, dict) or not isinstance(meta, dict):
        raise CheckpointError(f"{path}: state.json and meta.json must hold objects")
    return state, meta


def read_json_object(path: Path) -> dict[str, Any]:
    """A checkpoint's JSON file (state, meta, ranks), which holds one object; anything else
    is a CheckpointError naming the file."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: must hold a JSON object")
    return value


def _older_hint(path: Path) -> str:
    """``; older checkpoints: ...`` when ``path`` is a numbered checkpoint with older ones."""
    m = _STEP.match(path.name)
    if path.parent.name != "checkpoints":
        return ""
    older = [
        p
        for p in CheckpointManager(path.parent).checkpoints()
        if m is None or int(_STEP.match(p.name).group(1)) < int(m.group(1))  # type: ignore[union-attr]  # checkpoints() lists step-N folders only
    ]
    if not older:
        return ""
    return (
        f"; older checkpoints: {', '.join(p.name for p in older)} "
        f"(resume from one explicitly: --resume {older[-1]})"
    )


def is_complete(path: Path) -> bool:
    """Whether ``path`` has a manifest (written last: the folder was finished)."""
    return (path / MANIFEST).is_file()


def _remove(path: Path) -> None:
    """Delete checkpoint folder ``path``: renamed away first, so that a process killed
    mid-delete leaves a hidden ``.old-*`` folder, never a half-deleted checkpoint."""
    old = path.parent / f".old-{path.name}-{os.getpid()}"
    try:
        path.rename(old)
    except OSError:
        return
    shutil.rmtree(old, ignore_errors=True)


def _old_name(leftover: str) -> str:
    """The checkpoint name a ``.old-X-<pid>`` (or the distributed writer's ``.old-X``)
    folder was renamed from."""
    name = leftover.split("-", 1)[1] if "-" in leftover else leftover
    m = re.match(r"^(.+)-\d+$", name)
    return m.group(1) if m and not _STEP.match(name) else name


def _intact(path: Path) -> bool:
    try:
        verify(path)
    except CheckpointError:
        return False
    return True


class CheckpointManager:
    """Numbered checkpoints ``step-00000100`` in one folder, keeping the last ``keep_last``.

    Each is written by :func:`save_checkpoint` under a fresh name, so no complete
    checkpoint is ever renamed or overwritten while a new one is being written: a
    process killed mid-write (even by SIGKILL) leaves a ``.tmp-*`` folder, which
    :meth:`latest` ignores and the next manager removes. :meth:`latest` is the newest
    numbered folder, broken or not: loading it verifies it, and a broken newest
    checkpoint is refused by name, never passed over for an older one.

    Args:
        directory: the checkpoints folder (``run_dir/checkpoints``).
        keep_last: how many numbered checkpoints to keep.
    """

    def __init__(self, directory: str | Path, keep_last: int = 3) -> None:
        self.directory = Path(directory)
        self.keep_last = keep_last

    def clean_partial(self) -> None:
        """Remove ``.tmp-*`` / ``.old-*`` leftovers of crashed writers (call once, on one rank).

        A writer killed between its two renames (``X`` -> ``.old-X-<pid>``, then the new
        one -> ``X``) leaves no ``X``: a whole ``.old-X-*`` is then renamed back to ``X``
        (the previous ``best``/``final`` is not lost), and deleted only when ``X`` exists
        or it does not verify (a delete that was under way)."""
        if not self.directory.is_dir():
            return
        for p in sorted(self.directory.iterdir()):
            if not (p.name.startswith((".tmp-", ".old-")) and p.is_dir()):
                continue
            target = self.directory / _old_name(p.name)
            if p.name.startswith(".old-") and not target.exists() and _intact(p):
                p.rename(target)
                fsync_dir(self.directory)
            else:
                shutil.rmtree(p, ignore_errors=True)

    def checkpoints(self) -> list[Path]:
        """Numbered checkpoint folders, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.iterdir() if _STEP.match(p.name) and p.is_dir()]
        return sorted(found, key=lambda p: int(p.name[5:]))

    def latest(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def save(self, step: int, state: dict[str, Any], meta: dict[str, Any]) -> Path:
        """Write checkpoint ``step`` atomically, then drop the oldest beyond ``keep_last``."""
        path = save_checkpoint(self.directory / f"step-{step:08d}", state, meta)
        for old in self.checkpoints()[: -self.keep_last]:
            _remove(old)
        return path

    def set_aside_after(self, step: int) -> list[Path]:
        """Rename checkpoints newer than ``step`` to ``NAME.superseded`` (a run resumed
        explicitly from an older one would otherwise find them as its newest, or restore
        a ``best`` it never reached)."""
        moved = []
        named = [self.directory / n for n in ("best", "final") if (self.directory / n).is_dir()]
        for p in self.checkpoints() + named:
            if saved_step(p) > step:
                target = p.with_name(p.name + ".superseded")
                shutil.rmtree(target, ignore_errors=True)
                p.rename(target)
                moved.append(target)
        return moved


def saved_step(path: Path) -> int:
    """The step in checkpoint ``path``'s meta.json (-1 when unreadable)."""
    m = _STEP.match(path.name)
    if m:
        return int(m.group(1))
    try:
        return int(json.loads((path / _META).read_text()).get("step", -1))
    except (OSError, ValueError, TypeError, AttributeError):
        return -1


def link_checkpoint(source: Path, name: str) -> Path:
    """Make ``source.parent / name`` a copy of checkpoint ``source`` made of hard links.

    Costs no disk space; built under a temporary name and renamed like any
    checkpoint (``final`` and ``best`` are kept this way beside the numbered ones).
    """
    path = source.parent / name
    tmp = source.parent / f".tmp-{name}-{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        for f in source.iterdir():
            try:
                os.link(f, tmp / f.name)
            except OSError:  # file system without hard links
                shutil.copy2(f, tmp / f.name)
        fsync_dir(tmp)
        return _publish(tmp, path)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"{path}: cannot write checkpoint: {err.strerror}") from None


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The newest numbered checkpoint of a run directory, or :class:`CheckpointError`.

    Not verified here: loading it verifies it, and refuses it by name if broken."""
    path = CheckpointManager(Path(run_dir) / "checkpoints").latest()
    if path is None:
        raise CheckpointError(f"{run_dir}: no checkpoint under checkpoints/")
    return path


def resolve_resume(target: str | Path) -> tuple[Path, Path]:
    """``(run_dir, checkpoint)`` for ``--resume TARGET``: a run directory means its newest
    checkpoint; a checkpoint folder (``RUN_DIR/checkpoints/step-N``) means that one."""
    target = Path(target)
    if target.parent.name == "checkpoints" and (
        (target / MANIFEST).exists() or _STEP.match(target.name) or (target / "state.pt").exists()
    ):
        return target.parent.parent, target
    return target, latest_checkpoint(target)
