"""``recis doctor``: what is installed, whether it fits together, and what is missing.

Prints torch (build and CUDA), fbgemm (which package), torchrec, the native ops,
Horovod, and each optional extra with its installed versions; then one line per
problem with the command that fixes it. Exit status 0 when the core stack works,
1 otherwise (missing extras alone are not a failure).
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# fbgemm releases are built for exactly one torch minor (their version table)
_FBGEMM_FOR_TORCH = {"1.8": "2.13", "1.7": "2.12", "1.6": "2.11"}
_STACK = {"torchrec": "1.9.2", "torchmetrics": "1.0.3"}
# extras with their own requirements/extra-<name>.txt (the others come with `make install`)
_MAKE_EXTRAS = ("llm", "index", "serve")


@dataclass
class Report:
    """Lines to print and the problems found (each one line with its fix)."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def row(self, name: str, value: str) -> None:
        self.lines.append(f"  {name:<14} {value}")


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _torch(rep: Report) -> str | None:
    """Torch's version and build; returns its CUDA version (None for a CPU build)."""
    import torch

    build = torch.__version__.partition("+")[2] or "default build"
    cuda = torch.version.cuda
    rep.row("torch", f"{torch.__version__} ({'CUDA ' + cuda if cuda else 'CPU'} build, {build})")
    if cuda:
        if torch.cuda.is_available():
            names = sorted(
                {torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}
            )
            rep.row("CUDA", f"available: {torch.cuda.device_count()} device(s), {', '.join(names)}")
        else:
            rep.row("CUDA", "not available (no device or driver)")
            rep.notes.append(
                "torch is a CUDA build but no CUDA device is usable: training runs on CPU only; "
                "`make install` (CPU variant) is smaller on machines without a GPU"
            )
    else:
        rep.row("CUDA", "not available (CPU build)")
        if shutil.which("nvidia-smi") and _has_gpu():
            rep.notes.append(
                "this machine has an NVIDIA GPU but torch is the CPU build: "
                "`make install CUDA=cu128` (or cu126, matching the driver) for CUDA"
            )
    return cuda


def _has_gpu() -> bool:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def _fbgemm(rep: Report, cuda: str | None) -> None:
    import torch

    cpu_pkg, gpu_pkg = _version("fbgemm-gpu-cpu"), _version("fbgemm-gpu")
    if cpu_pkg and gpu_pkg:
        rep.problems.append(
            f"both fbgemm-gpu-cpu {cpu_pkg} and fbgemm-gpu {gpu_pkg} are installed (they share "
            "fbgemm_gpu/, the last one installed wins; torchrec with dependencies pulls "
            "fbgemm-gpu): pip uninstall -y fbgemm-gpu fbgemm-gpu-cpu, then `make install`"
        )
    pkg, ver = ("fbgemm-gpu-cpu", cpu_pkg) if cpu_pkg else ("fbgemm-gpu", gpu_pkg)
    if ver is None:
        rep.row("fbgemm", "missing")
        rep.problems.append("fbgemm is not installed: `make install` (or CUDA=cu128)")
        return
    try:
        importlib.import_module("fbgemm_gpu")
        loads = "loads"
    except Exception as err:  # "undefined symbol": built for another torch
        loads = f"does not load: {_first_line(err)}"
        rep.problems.append(
            f"fbgemm_gpu does not load ({_first_line(err)[:120]}): {pkg} {ver} is not built for "
            f"torch {torch.__version__}; `make install` reinstalls the matching pair"
        )
    rep.row("fbgemm", f"{pkg} {ver} ({loads})")
    want = _FBGEMM_FOR_TORCH.get(".".join(ver.split("+")[0].split(".")[:2]))
    have = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    if want and want != have:
        rep.problems.append(
            f"{pkg} {ver} is built for torch {want}, not {have}: `make install` pins the pair"
        )
    if cuda and pkg == "fbgemm-gpu-cpu":
        rep.problems.append(
            "torch is a CUDA build but fbgemm is fbgemm-gpu-cpu (no CUDA kernels): "
            "`make install CUDA=cu128` (the variant of your torch)"
        )
    if not cuda and pkg == "fbgemm-gpu":
        rep.problems.append(
            "torch is the CPU build but fbgemm is the CUDA package fbgemm-gpu: "
            "pip uninstall -y fbgemm-gpu, then `make install`"
        )


def _stack(rep: Report) -> None:
    for dist, want in _STACK.items():
        ver = _version(dist)
        rep.row(dist, ver or "missing")
        if ver is None:
            rep.problems.append(f"{dist} is not installed: `make install`")
        elif ver != want:
            rep.problems.append(
                f"{dist} {ver} installed, recis is tested with {want}: `make install`"
            )
    if _version("torchrec"):
        try:
            importlib.import_module("torchrec")
        except Exception as err:
            rep.problems.append(f"torchrec does not import ({_first_line(err)[:160]})")


def _native(rep: Report) -> None:
    from recis.ops import build

    if os.environ.get("RECIS_NATIVE", "1") == "0":
        rep.row("native ops", "disabled (RECIS_NATIVE=0)")
        return
    states = {name: build.status(name) for name in build.EXTENSIONS}
    rep.row("native ops", ", ".join(f"{n} {s}" for n, s in states.items()))
    bad = [n for n, s in states.items() if s != "built"]
    if bad:
        rep.problems.append(
            f"native ops {', '.join(bad)} not built for this source and torch: {build.REBUILD}"
        )


def _horovod(rep: Report) -> None:
    ver = _version("horovod")
    rep.row("horovod", ver or "missing (only `launcher: horovod` needs it; `make horovod`)")


def extras() -> dict[str, list[str]]:
    """recis's optional extras: name -> requirement strings.

    From pyproject.toml when recis runs from a source checkout (editable install:
    a stale ``*.egg-info`` beside it would otherwise shadow the installed
    metadata), else from the installed distribution's metadata.
    """
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if pyproject.is_file():
        try:
            import tomllib
        except ImportError:  # Python 3.10: the metadata below
            pass
        else:
            project = tomllib.loads(pyproject.read_text()).get("project", {})
            if project.get("name") == "recis":
                return dict(project.get("optional-dependencies", {}))
    out: dict[str, list[str]] = {}
    for req in md.requires("recis") or []:
        m = re.search(r"""extra\s*==\s*["']([^"']+)["']""", req)
        if m:
            out.setdefault(m.group(1), []).append(req.split(";")[0].strip())
    return out


def _extras(rep: Report) -> None:
    from packaging.requirements import Requirement

    for name, reqs in extras().items():
        if name == "dev":
            continue
        got, missing = [], []
        for text in reqs:
            req = Requirement(text)
            ver = _version(req.name)
            if ver is None:
                missing.append(req.name)
            elif req.specifier and ver not in req.specifier:
                got.append(f"{req.name} {ver} (pinned {req.specifier})")
            else:
                got.append(f"{req.name} {ver}")
        state = "installed" if not missing else ("missing" if not got else "partly installed")
        detail = "; ".join(got + [f"{n} missing" for n in missing])
        rep.row(f"extra {name}", f"{state}: {detail}")
        if missing:
            rep.notes.append(
                f"extra {name}: {', '.join(missing)} missing: `make install"
                + (f" EXTRAS={name}`" if name in _MAKE_EXTRAS else "`")
            )


def diagnose() -> Report:
    """Collect every section; never raises for a broken package (it becomes a problem line)."""
    rep = Report()
    rep.row("recis", f"{_version('recis') or 'not installed'} (python {sys.version.split()[0]})")
    cuda = _torch(rep)
    sections: dict[str, Callable[[], None]] = {
        "fbgemm": lambda: _fbgemm(rep, cuda),
        "stack": lambda: _stack(rep),
        "native": lambda: _native(rep),
        "horovod": lambda: _horovod(rep),
        "extras": lambda: _extras(rep),
    }
    for name, section in sections.items():
        try:
            section()
        except Exception as err:  # a doctor reports, it does not crash
            rep.problems.append(f"{name}: {_first_line(err)}")
    return rep


def main() -> int:
    """Print the report; 0 when the core stack is sound."""
    rep = diagnose()
    print("recis doctor")
    print("\n".join(rep.lines))
    for note in rep.notes:
        print(f"note: {note}")
    for problem in rep.problems:
        print(f"problem: {problem}")
    print("ok: the core stack fits together" if not rep.problems else "not ok")
    return 1 if rep.problems else 0


if __name__ == "__main__":
    sys.exit(main())
