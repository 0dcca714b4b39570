"""Versioned, atomic publishing of exports into one folder.

Layout of ``DIR``::

    DIR/v000001/        a complete version: its files, manifest.json, READY (written last)
    DIR/v000002/
    DIR/latest          the name of the version to serve (one line), replaced atomically
    DIR/.tmp-v000003-PID/   a version being written (or left by a killed export)

A version is written under ``.tmp-<version>-<pid>``, every file fsynced, then renamed to
``<version>``; ``READY`` is written in it after the rename and ``latest`` is replaced (write
``latest.tmp-PID``, fsync, rename) only after that. A process killed at any moment leaves
``latest`` naming the previous complete version; readers take a version only when it has
``READY`` and its files match the manifest.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from recis.errors import OutputError
from recis.train.checkpoint import fsync_dir, write_file

LATEST = "latest"
READY = "READY"
_VERSION = re.compile(r"^v(\d{6,})$")
_TMP = re.compile(r"^\.tmp-(v\d{6,})-(\d+)$")
# fault injection for tests: seconds to sleep between the rename and READY (a publish that
# a test kills there must leave ``latest`` on the previous version)
PAUSE_ENV = "RECIS_PUBLISH_PAUSE_S"


def versions(out: Path) -> list[str]:
    """Version folders of ``out`` (complete or not), oldest first."""
    if not out.is_dir():
        return []
    found = [p.name for p in out.iterdir() if p.is_dir() and _VERSION.match(p.name)]
    return sorted(found, key=lambda n: int(n[1:]))


def is_ready(version_dir: Path) -> bool:
    return (version_dir / READY).is_file()


def read_latest(out: Path) -> str | None:
    """The version ``latest`` names, or None (no pointer yet)."""
    try:
        name = (out / LATEST).read_text().strip()
    except FileNotFoundError:
        return None
    return name if _VERSION.match(name) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_leftovers(out: Path) -> None:
    """Remove ``.tmp-*`` folders of exports whose process is gone (killed mid-write)."""
    for p in out.iterdir():
        m = _TMP.match(p.name)
        if m and not _alive(int(m.group(2))):
            shutil.rmtree(p, ignore_errors=True)


def publish(out: str | Path, write: Callable[[Path], None], keep: int | None = None) -> Path:
    """Write a new version of ``out`` with ``write(folder)`` and publish it; returns its path.

    ``keep``: keep this many newest versions (the published one included), remove older."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        _clean_leftovers(out)
        have = versions(out) + [m.group(1) for p in out.iterdir() if (m := _TMP.match(p.name))]
        number = max((int(n[1:]) for n in have), default=0) + 1
        name = f"v{number:06d}"
        tmp = out / f".tmp-{name}-{os.getpid()}"
        tmp.mkdir()
    except OSError as err:
        raise OutputError(f"{out}: cannot write an export there: {err.strerror}") from None
    try:
        write(tmp)
        _readable(tmp)
        fsync_dir(tmp)
        final = out / name
        os.rename(tmp, final)
        fsync_dir(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pause = float(os.environ.get(PAUSE_ENV, "0") or 0)
    if pause > 0:
        time.sleep(pause)
    write_file(final / READY, f"{name}\n".encode())
    fsync_dir(final)
    set_latest(out, name)
    if keep is not None:
        prune_versions(out, keep)
    return final


def _readable(folder: Path) -> None:
    """Give every file of ``folder`` the mode a plain ``open()`` would (0666 less the umask):
    safetensors writes its files 0600, which a server running as another user cannot read."""
    umask = os.umask(0)
    os.umask(umask)
    for p in folder.rglob("*"):
        if p.is_file():
            p.chmod(0o666 & ~umask)


def set_latest(out: Path, name: str) -> None:
    """Point ``out/latest`` at version ``name`` atomically (write a temporary file, rename)."""
    tmp = out / f"{LATEST}.tmp-{os.getpid()}"
    write_file(tmp, f"{name}\n".encode())
    os.replace(tmp, out / LATEST)
    fsync_dir(out)


def prune_versions(out: Path, keep: int) -> list[str]:
    """Remove all but the ``keep`` newest versions (never the one ``latest`` names)."""
    if keep < 1:
        raise OutputError(f"--keep: {keep}: must keep at least 1 version")
    current = read_latest(out)
    kept = versions(out)[-keep:]
    needed = {*kept, *([current] if current else [])}
    for name in list(needed):  # the bases that kept delta versions are applied to
        needed |= _bases(out, name)
    removed = [n for n in versions(out)[:-keep] if n not in needed]
    for n in removed:
        shutil.rmtree(out / n, ignore_errors=True)
    return removed


def _bases(out: Path, name: str) -> set[str]:
    """The versions that version ``name`` is a delta of (directly or through others)."""
    import json

    found: set[str] = set()
    while len(found) < 1000:
        try:
            delta = json.loads((out / name / "manifest.json").read_text()).get("delta")
        except (OSError, ValueError):
            return found
        if not delta or delta.get("base") in found:
            return found
        name = str(delta["base"])
        found.add(name)
    return found
