"""Run mypy over the installed shape of recis: ``recis.io``, ``recis.ops``, ``recis.models``.

Why a script: pyproject's ``package-dir`` installs the sibling folders ``io/``, ``ops/`` and
``models/`` as sub-packages of ``recis``, and the editable install maps them with an import
hook that mypy does not run. Handed ``io/reader.py`` directly, mypy would call it ``io.reader``
(shadowing the standard library) and find no ``recis.io``. So this script lays a tree of
symlinks, ``build/typecheck/recis/{io,ops,models,...}``, that has the installed layout, and
runs mypy there with the ``[tool.mypy]`` settings of pyproject.toml. Paths in the report are
given back as the checkout's (``io/reader.py``, not ``recis/io/reader.py``).

Usage: ``python scripts/typecheck.py``              the whole package (``make lint``)
       ``python scripts/typecheck.py FILE|DIR ...``  only these (checkout paths)
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREE = ROOT / "build" / "typecheck"
# the sibling folders installed under recis (pyproject [tool.setuptools] package-dir)
SIBLINGS = {"io": "io", "ops": "ops", "models": "models"}


def _link(target: Path, link: Path) -> None:
    """``link`` -> ``target`` (relative); kept when already right, so runs may overlap."""
    rel = os.path.relpath(target, link.parent)
    if link.is_symlink() and os.readlink(link) == rel:
        return
    if link.is_symlink():
        link.unlink()
    with contextlib.suppress(FileExistsError):  # another run made the same link meanwhile
        link.symlink_to(rel)


def lay_tree() -> Path:
    """``build/typecheck/recis``: a symlink per entry of ``recis/`` plus the sibling folders."""
    pkg = TREE / "recis"
    pkg.mkdir(parents=True, exist_ok=True)
    wanted = {p.name: p for p in (ROOT / "recis").iterdir() if p.name != "__pycache__"}
    wanted.update({name: ROOT / folder for name, folder in SIBLINGS.items()})
    for link in pkg.iterdir():
        if link.name not in wanted and link.is_symlink():
            link.unlink()
    for name, target in wanted.items():
        _link(target, pkg / name)
    return pkg


def tree_path(arg: str) -> str:
    """A checkout path (``io/reader.py``, ``recis/config.py``) as a path in the tree."""
    rel = Path(os.path.relpath(Path(arg).resolve(), ROOT))
    head = rel.parts[0] if rel.parts else ""
    if head == "recis":
        return str(Path("recis", *rel.parts[1:]))
    if head in SIBLINGS.values():
        return str(Path("recis", *rel.parts))
    raise SystemExit(f"typecheck: {arg} is not under recis/, io/, ops/ or models/")


def checkout_path(line: str) -> str:
    """A report line with its tree path (``recis/io/x.py``) given back as ``io/x.py``."""
    for folder in SIBLINGS.values():
        prefix = f"recis/{folder}/"
        if line.startswith(prefix):
            return line[len("recis/") :]
    return line


def main(argv: list[str]) -> int:
    lay_tree()
    targets = [tree_path(a) for a in argv] if argv else ["-p", "recis"]
    cmd = [
        sys.executable,
        "-m",
        "mypy",
        "--config-file",
        str(ROOT / "pyproject.toml"),
        "--cache-dir",
        str(ROOT / "build" / "mypy_cache"),
        *targets,
    ]
    proc = subprocess.run(cmd, cwd=TREE, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        print(checkout_path(line))
    sys.stderr.write(proc.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
