"""Build recis's C++ extensions in place at install time, and load them without compiling.

``make install`` (or ``python -m recis.ops.build``) compiles each source of
``ops/csrc`` into ``ops/_native/recis_<name>_<tag>.so``, next to the sources, so
an editable install and a wheel built afterwards both find it. The tag hashes the
source, the compiler flags, torch's version and the Python ABI: a changed source,
another torch or another Python looks for another file, finds none, and
:func:`load` raises a one-line :class:`~recis.errors.NativeBuildError` saying how
to rebuild, instead of loading a module that no longer matches.

Training processes only load; they never compile. The compiler runs in a fresh
temporary directory per build (torch's build lock lives and dies there), and the
finished module is renamed into place, so a build killed at any moment leaves no
lock another process waits on and no half-written module. Two checkouts build
into their own ``ops/_native`` and never touch each other's modules.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from recis.errors import NativeBuildError

CSRC = Path(__file__).parent / "csrc"
NATIVE_DIR = Path(__file__).parent / "_native"
REBUILD = "run `make native` (or `python -m recis.ops.build`)"
_X86 = platform.machine() in ("x86_64", "AMD64")


@dataclass(frozen=True)
class Extension:
    """One C++ extension: ``csrc/<source>`` (and the ``csrc`` headers it includes) built
    with these flags."""

    name: str
    source: str
    cflags: tuple[str, ...]
    ldflags: tuple[str, ...] = ("-fopenmp",)
    headers: tuple[str, ...] = ("task_pool.h",)


# -fopenmp: at::parallel_for is OpenMP pragmas in torch's headers; without the flag
# the loops run on one thread. No -ffast-math, no implicit FMA contraction: the
# fused backward must equal fbgemm's bit for bit (its source spells out fbgemm's
# FMAs). AVX2 lets its double-precision Adagrad loop vectorize; x86 CPUs without
# AVX2 never load it (recis.ops.fused_backward checks the CPU first).
EXTENSIONS: dict[str, Extension] = {
    "id_mapper": Extension("id_mapper", "id_mapper.cpp", ("-O3", "-fopenmp", "-ffp-contract=off")),
    "fused_backward": Extension(
        "fused_backward",
        "fused_backward.cpp",
        ("-O3", "-ffp-contract=off", "-fno-math-errno", "-fopenmp")
        + (("-mavx2", "-mfma") if _X86 else ()),
    ),
}


def tag(ext: Extension, csrc: Path | None = None) -> str:
    """12 hex digits naming one build: source and header bytes, flags, torch version, Python
    ABI, CPU."""
    h = hashlib.sha256(((csrc or CSRC) / ext.source).read_bytes())
    for header in ext.headers:
        h.update(((csrc or CSRC) / header).read_bytes())
    for part in (*ext.cflags, "|", *ext.ldflags, torch.__version__, sys.implementation.cache_tag):
        h.update(part.encode() + b"\0")
    h.update(platform.machine().encode())
    return h.hexdigest()[:12]


def module_name(ext: Extension, csrc: Path | None = None) -> str:
    """The Python module name (and file stem) of ``ext``'s current build."""
    return f"recis_{ext.name}_{tag(ext, csrc)}"


def built_path(ext: Extension, native_dir: Path | None = None, csrc: Path | None = None) -> Path:
    """Where the build of ``ext`` for this source, torch and Python lives."""
    return (native_dir or NATIVE_DIR) / f"{module_name(ext, csrc)}.so"


def status(name: str, native_dir: Path | None = None, csrc: Path | None = None) -> str:
    """``"built"``, ``"stale"`` (only builds for another source/torch exist) or ``"missing"``."""
    ext = EXTENSIONS[name]
    native_dir = native_dir or NATIVE_DIR
    if built_path(ext, native_dir, csrc).is_file():
        return "built"
    return "stale" if any(native_dir.glob(f"recis_{ext.name}_*.so")) else "missing"


def load(name: str, native_dir: Path | None = None, csrc: Path | None = None) -> ModuleType:
    """Import the built extension ``name``; never compiles.

    Raises:
        NativeBuildError: no build for this source and torch (one line saying how
            to rebuild), or the file does not load (e.g. built against another torch).
    """
    ext = EXTENSIONS[name]
    mod = module_name(ext, csrc)
    path = (native_dir or NATIVE_DIR) / f"{mod}.so"
    loaded = sys.modules.get(mod)
    if loaded is not None and getattr(loaded, "__file__", None) == str(path):
        return loaded  # the same build, imported before (a module is loaded once per path)
    if not path.is_file():
        state = status(name, native_dir, csrc)
        why = "was built for another source or torch" if state == "stale" else "has not been built"
        raise NativeBuildError(
            f"native op {name} (ops/csrc/{ext.source}) {why}: {path} is missing; {REBUILD}, "
            "or set RECIS_NATIVE=0 to run without native ops"
        )
    spec = importlib.util.spec_from_file_location(mod, path)
    assert spec is not None and spec.loader is not None
    try:  # dlopen happens in module_from_spec (create_module) for extension modules
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except ImportError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise NativeBuildError(
            f"native op {name}: {path} does not load ({first}); {REBUILD}"
        ) from err
    sys.modules[mod] = module
    return module


_LOADED: dict[str, ModuleType | None] = {}


def native(name: str, usable: Callable[[], bool] | None = None) -> ModuleType | None:
    """The built extension ``name``, loaded once per process (:func:`load`, never compiles),
    or None with ``RECIS_NATIVE=0`` or when ``usable()`` says this machine cannot run it.

    The one loader every native op goes through. A missing or stale build raises the
    one-line :class:`~recis.errors.NativeBuildError` of :func:`load` (and is not cached,
    so a later call after ``make native`` loads it).
    """
    if name not in _LOADED:
        off = os.environ.get("RECIS_NATIVE", "1") == "0"
        _LOADED[name] = None if off or (usable is not None and not usable()) else load(name)
    return _LOADED[name]


# torch's JIT loader, run in a child process (it compiles, then loads the module there)
_COMPILE = (
    "import json, sys; from torch.utils.cpp_extension import load; load(**json.loads(sys.argv[1]))"
)


def _compile(args: dict[str, object], verbose: bool) -> None:
    """Compile with torch's loader in a child process whose PATH starts with this
    interpreter's folder: torch runs ``ninja`` from PATH, and the PyPI ninja lives there (off
    PATH in a virtualenv that is not activated). The child is given that environment
    explicitly; this process's own environment is never edited."""
    bindir = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in (bindir, os.environ.get("PATH", "")) if p)
    done = subprocess.run(
        [sys.executable, "-c", _COMPILE, json.dumps(args)],
        env={**os.environ, "PATH": path},
        stdout=None if verbose else subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if done.returncode != 0:
        lines = [x for x in (done.stdout or "").splitlines() if x.strip()]
        last = lines[-1].strip() if lines else f"exit status {done.returncode}"
        raise NativeBuildError(f"compiling {args['name']} failed: {last} (--verbose shows all)")


def build(
    name: str,
    native_dir: Path | None = None,
    csrc: Path | None = None,
    force: bool = False,
    verbose: bool = False,
) -> Path:
    """Compile extension ``name`` into ``native_dir`` unless its current build is there.

    Compiles in a fresh temporary directory (torch's build lock lives there and is
    removed with it), then renames the module into place: readers see either no
    file or the whole file. Returns the module's path.
    """
    ext = EXTENSIONS[name]
    mod = module_name(ext, csrc)
    native_dir, csrc = native_dir or NATIVE_DIR, csrc or CSRC
    dest = native_dir / f"{mod}.so"
    if dest.is_file() and not force:
        return dest
    native_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"recis-build-{name}-") as tmp:
        args = {
            "name": mod,
            "sources": [str(csrc / ext.source)],
            "extra_cflags": list(ext.cflags),
            "extra_ldflags": list(ext.ldflags),
            "build_directory": tmp,
            "verbose": verbose,
        }
        _compile(args, verbose)
        staged = native_dir / f".{mod}.{os.getpid()}.tmp"
        shutil.copy2(Path(tmp) / f"{mod}.so", staged)
        os.replace(staged, dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    """``python -m recis.ops.build [--check] [--force] [names...]``: build or check in place."""
    parser = argparse.ArgumentParser(prog="python -m recis.ops.build", description=__doc__)
    parser.add_argument("names", nargs="*", default=list(EXTENSIONS), help="default: all")
    parser.add_argument("--check", action="store_true", help="only say whether each is built")
    parser.add_argument("--force", action="store_true", help="rebuild even if built")
    parser.add_argument("--verbose", action="store_true", help="show the compiler's output")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(EXTENSIONS))
    if unknown:
        print(f"error: unknown native op {unknown[0]} (known: {', '.join(EXTENSIONS)})")
        return 2
    if os.environ.get("RECIS_NATIVE", "1") == "0" and not args.check:
        print("RECIS_NATIVE=0: native ops not built (recis runs the numpy/fbgemm paths)")
        return 0
    failed = 0
    for name in args.names:
        if args.check:
            state = status(name)
            print(f"{name}: {state} ({built_path(EXTENSIONS[name]).name})")
            failed += state != "built"
            continue
        start = time.perf_counter()
        fresh = not built_path(EXTENSIONS[name]).is_file() or args.force
        try:
            path = build(name, force=args.force, verbose=args.verbose)
        except Exception as err:  # compiler missing or failing: one line, then stop
            last = (str(err).strip().splitlines() or [type(err).__name__])[-1]
            print(
                f"error: building native op {name} (ops/csrc/{EXTENSIONS[name].source}) "
                f"failed: {last}; needs a C++17 compiler (g++), rerun with --verbose for "
                "its output, or set RECIS_NATIVE=0 to run without native ops",
                file=sys.stderr,
            )
            failed += 1
            continue
        took = f"built in {time.perf_counter() - start:.0f} s" if fresh else "up to date"
        print(f"{name}: {took} ({path})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
