"""The install: per-variant pins, the extras, a clean pip resolution, the one-line errors,
native ops loaded without compiling, and `recis doctor`.

The resolution tests run pip as a fresh machine would: ``--isolated`` plus
``PIP_CONFIG_FILE=/dev/null`` (``--isolated`` alone still reads /etc/pip.conf and
/etc/xdg/pip, where this machine's wheelhouse is configured). They need PyPI and
skip, saying so, when it is unreachable.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from functools import cache
from pathlib import Path

import pytest

from recis.errors import NativeBuildError
from recis.ops import build

ROOT = Path(__file__).resolve().parents[1]
REQ = ROOT / "requirements"
VARIANTS = ("cpu", "cu126", "cu128")
EXTRAS = ("llm", "index", "serve")


def _pins(path: Path) -> dict[str, str]:
    """``name==version`` lines of a requirements/constraints file (comments skipped)."""
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if m:
            out[_norm(m.group(1))] = m.group(2)
    return out


def test_each_variant_pins_its_own_torch_and_fbgemm() -> None:
    stack = _pins(REQ / "stack.txt")
    assert not {"torch", "fbgemm-gpu", "fbgemm-gpu-cpu", "torchrec"} & set(stack)
    for variant in VARIANTS:
        text = (REQ / f"{variant}.txt").read_text()
        pins = _pins(REQ / f"{variant}.txt")
        # the local label makes PyPI's plain (CUDA) torch unable to satisfy the pin
        assert pins["torch"] == f"2.13.0+{variant}"
        assert pins["torchrec"] == "1.9.2" and pins["torchmetrics"] == "1.0.3"
        if variant == "cpu":
            assert pins["fbgemm-gpu-cpu"] == "1.8.0"
            assert "\nfbgemm-gpu<0\n" in text  # anything pulling the CUDA fbgemm fails
        else:
            assert pins["fbgemm-gpu"] == f"1.8.0+{variant}"
            assert "\nfbgemm-gpu-cpu<0\n" in text


def test_extras_pinned_alike_in_requirements_and_pyproject() -> None:
    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for name in EXTRAS:
        declared = {}
        for text in optional[name]:
            req = Requirement(text)
            spec = str(req.specifier)
            if spec.startswith("=="):
                declared[_norm(req.name)] = spec[2:]
        assert declared == _pins(REQ / f"extra-{name}.txt"), name
    assert _pins(REQ / "extra-llm.txt") == {
        "trl": "1.16.0",
        "peft": "0.21.2",
        "accelerate": "1.16.0",
        "datasets": "5.2.0",
    }


def _make_n(*args: str) -> str:
    proc = subprocess.run(
        ["make", "-n", "--no-print-directory", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_make_install_switches(tmp_path) -> None:
    venv = tmp_path / "v"
    cpu = _make_n("install", f"VENV={venv}")
    assert f"scripts/install_stack.sh {venv}/bin/python cpu" in cpu
    assert "RECIS_CONSTRAINTS=requirements/cpu.txt" in cpu
    cuda = _make_n("install", f"VENV={venv}", "CUDA=cu128", "EXTRAS=llm,serve")
    assert f"scripts/install_stack.sh {venv}/bin/python cu128\n" in cuda
    assert "RECIS_CONSTRAINTS=requirements/cu128.txt" in cuda
    assert f"install_stack.sh {venv}/bin/python cu128 extra llm" in cuda
    assert f"install_stack.sh {venv}/bin/python cu128 extra serve" in cuda
    assert " cpu" not in cuda
    assert "-m recis.ops.build" in cpu  # the native ops are part of the install


# ---------------------------------------------------------------- clean pip resolution


@cache
def _reachable(url: str) -> bool:
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=5)
    except Exception:
        return False
    return True


def _need_pypi() -> None:
    if not _reachable("https://pypi.org/simple/pip/"):
        pytest.skip("PyPI unreachable: the clean-resolver checks need https://pypi.org")


def _torch_cpu_source() -> list[str]:
    """Where a fresh machine's pip finds torch 2.13.0+cpu: the PyTorch CPU index when reachable,
    else a folder holding the wheel (RECIS_TORCH_WHEELS, or this machine's /opt/wheels) given
    explicitly on the command line, never through the machine's pip configuration."""
    if _reachable("https://download.pytorch.org/whl/cpu/torch/"):
        return ["--extra-index-url", "https://download.pytorch.org/whl/cpu"]
    for folder in (os.environ.get("RECIS_TORCH_WHEELS"), "/opt/wheels"):
        if folder and list(Path(folder).glob("torch-2.13.0+cpu-*.whl")):
            return ["--find-links", folder]
    pytest.skip("no source of torch 2.13.0+cpu: download.pytorch.org unreachable, no wheel folder")


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # no /etc/pip.conf, no /etc/xdg/pip, no user config
    return env


def _resolve(tmp_path: Path, *args: str) -> dict[str, str]:
    """``pip install --dry-run --isolated --report`` as on a fresh machine: name -> version."""
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check", "install"]
    cmd += ["--dry-run", "--ignore-installed", "--quiet", "--report", str(report), *args]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=_clean_env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    items = json.loads(report.read_text())["install"]
    return {_norm(i["metadata"]["name"]): i["metadata"]["version"] for i in items}


def _norm(name: str) -> str:
    """PEP 503 name: the report keeps each wheel's own spelling (fbgemm_gpu_cpu)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _cpu_stack_args(*extra: str) -> list[str]:
    pins = _pins(REQ / "cpu.txt")
    return [
        f"torch=={pins['torch']}",
        f"fbgemm-gpu-cpu=={pins['fbgemm-gpu-cpu']}",
        "-r",
        "requirements/stack.txt",
        *extra,
        "-c",
        "requirements/cpu.txt",
        *_torch_cpu_source(),
    ]


def _assert_cpu_variant(got: dict[str, str]) -> None:
    assert got["torch"] == "2.13.0+cpu"
    assert got["fbgemm-gpu-cpu"] == "1.8.0"
    cuda = sorted(n for n in got if n.startswith(("nvidia-", "triton")) or n == "fbgemm-gpu")
    assert cuda == [], f"the CPU variant resolves CUDA packages: {cuda}"
    stack = _pins(REQ / "stack.txt")
    moved = {n: (v, got[n]) for n, v in stack.items() if n in got and got[n] != v}
    assert moved == {}, moved


@pytest.mark.slow
def test_clean_resolution_cpu_variant_with_every_extra(tmp_path) -> None:
    """The CPU stack plus every extra, resolved together by a clean pip (about a minute,
    mostly PyPI round trips): the CPU torch and fbgemm, nothing CUDA, every stack pin
    (transformers included) unmoved, each extra at its pin."""
    _need_pypi()
    extras = [a for name in EXTRAS for a in ("-r", f"requirements/extra-{name}.txt")]
    got = _resolve(tmp_path, *_cpu_stack_args(*extras))
    _assert_cpu_variant(got)
    assert got["transformers"] == _pins(REQ / "stack.txt")["transformers"]
    for name in EXTRAS:
        for dist, version in _pins(REQ / f"extra-{name}.txt").items():
            assert got[dist] == version, (name, dist)
    # torchrec from PyPI, without its metadata's CUDA fbgemm-gpu
    assert _resolve(tmp_path, "--no-deps", "torchrec==1.9.2") == {"torchrec": "1.9.2"}


@pytest.fixture(scope="module")
def scratch_python(tmp_path_factory) -> str:
    """A new venv without torch (the install script must not touch the shared one)."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    return str(venv / "bin" / "python")


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["cpu", "cu128"])
def test_variant_without_its_wheel_stops_in_one_line(tmp_path, scratch_python, variant) -> None:
    """No source has the variant's torch: one line naming it and the fix; nothing installed
    (PyPI's plain torch, a CUDA build, is never taken instead)."""
    _need_pypi()
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    env = _clean_env() | {"PIP_ARGS": "--isolated", "TORCH_INDEX": str(empty)}
    proc = subprocess.run(
        ["scripts/install_stack.sh", scratch_python, variant],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: no torch==2.13.0+{variant} wheel for cp")
    assert "TORCH_INDEX" in lines[0] and str(empty) in lines[0]
    check = subprocess.run([scratch_python, "-c", "import torch"], capture_output=True)
    assert check.returncode != 0  # nothing of torch was installed


def test_unknown_variant_is_one_line() -> None:
    proc = subprocess.run(
        ["scripts/install_stack.sh", sys.executable, "cu999"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: unknown variant 'cu999' (known: cpu cu126 cu128); "
        "set CUDA= for CPU or CUDA=cu126|cu128"
    ]


# ---------------------------------------------------------------- native ops


def test_native_ops_load_without_compiling(tmp_path) -> None:
    """Both modules come from ops/_native; torch's JIT compiler is never called."""
    code = """
import torch.utils.cpp_extension as ce
def refuse(*a, **k):
    raise AssertionError("JIT compile in a training process")
ce.load = ce.load_inline = ce._jit_compile = refuse
from recis.ops.id_mapper_probe import native_kernels
from recis.ops.fused_backward import native_backward
print(native_kernels().__file__)
print(native_backward().__file__)
"""
    env = os.environ | {"TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"), "RECIS_NATIVE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    files = [Path(p) for p in proc.stdout.split()]
    assert [f.parent for f in files] == [build.NATIVE_DIR, build.NATIVE_DIR]
    assert [f.name.split("_")[1] for f in files] == ["id", "fused"]
    assert not (tmp_path / "ext").exists()  # nothing written to torch's extension cache


def test_missing_build_is_one_line(tmp_path) -> None:
    with pytest.raises(NativeBuildError) as err:
        build.load("id_mapper", native_dir=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg
    assert "has not been built" in msg and "make native" in msg and "RECIS_NATIVE=0" in msg
    assert build.status("id_mapper", native_dir=tmp_path) == "missing"


def test_stale_build_is_one_line(tmp_path) -> None:
    """A changed source looks for another file: the old build is reported stale."""
    csrc = tmp_path / "csrc"
    csrc.mkdir()
    for src in [*build.CSRC.glob("*.cpp"), *build.CSRC.glob("*.h")]:
        (csrc / src.name).write_text(src.read_text() + "\n// changed\n")
    ext = build.EXTENSIONS["id_mapper"]
    assert build.tag(ext, csrc) != build.tag(ext)
    assert build.status("id_mapper", csrc=csrc) == "stale"  # ops/_native has the old one
    with pytest.raises(NativeBuildError) as err:
        build.load("id_mapper", csrc=csrc)
    assert "\n" not in str(err.value)
    assert "was built for another source or torch" in str(err.value)
    # a file that is there but does not load (e.g. built against another torch)
    bad = build.built_path(ext, native_dir=tmp_path, csrc=csrc)
    bad.write_bytes(b"not an ELF file")
    with pytest.raises(NativeBuildError, match="does not load") as err:
        build.load("id_mapper", native_dir=tmp_path, csrc=csrc)
    assert "\n" not in str(err.value) and "make native" in str(err.value)


def _start_build(native: Path, tmp: Path) -> subprocess.Popen:
    code = (
        "import sys; from pathlib import Path; from recis.ops import build;"
        "build.build('id_mapper', native_dir=Path(sys.argv[1]), force=True)"
    )
    env = os.environ | {"TMPDIR": str(tmp), "MAX_JOBS": "1"}
    # its own session: the kill takes ninja and the compiler with it
    return subprocess.Popen(
        [sys.executable, "-c", code, str(native)], env=env, start_new_session=True
    )


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the build and everything in its session (ninja gives each compiler its own
    process group, so killing the group would leave the compiler running)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            session = int(stat.read_text().rsplit(")", 1)[1].split()[3])
        except (OSError, IndexError, ValueError):
            continue
        if session == proc.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(stat.parent.name), signal.SIGKILL)
    proc.wait()


def _wait_for(pattern: str, folder: Path, old: set[Path], timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = set(folder.glob(pattern)) - old
        if new:
            return new.pop()
        time.sleep(0.2)
    raise AssertionError(f"no {pattern} in {folder} after {timeout} s")


def test_build_killed_mid_compile_blocks_nothing(tmp_path) -> None:
    """SIGKILL while the compiler holds torch's build lock: no module, no temp file in
    ops/_native, and the next build gets past the lock at once (it has its own folder)."""
    native, tmp = tmp_path / "native", tmp_path / "tmp"
    tmp.mkdir()
    first = _start_build(native, tmp)
    try:
        lock = _wait_for("recis-build-id_mapper-*/lock", tmp, set())
    finally:
        _kill(first)
    assert lock.exists()  # the killed build's lock stays behind, in its own folder only
    assert list(native.iterdir()) == []
    second = _start_build(native, tmp)
    try:  # torch writes build.ninja once it holds the lock: the old lock did not block
        _wait_for("recis-build-id_mapper-*/build.ninja", tmp, {lock.parent / "build.ninja"})
    finally:
        _kill(second)
    assert list(native.iterdir()) == []


def test_build_is_a_no_op_when_built(monkeypatch) -> None:
    """Re-running the install step does not compile (and needs no compiler)."""
    import torch.utils.cpp_extension as ce

    def refuse(*a, **k):
        raise AssertionError("compiled although built")

    monkeypatch.setattr(ce, "load", refuse)
    for name in build.EXTENSIONS:
        assert build.build(name) == build.built_path(build.EXTENSIONS[name])
    assert build.main(["--check"]) == 0


def test_disabled_native_ops_load_nothing() -> None:
    code = (
        "from recis.ops.id_mapper_probe import native_kernels;"
        "from recis.ops.fused_backward import native_backward;"
        "print(native_kernels(), native_backward())"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=os.environ | {"RECIS_NATIVE": "0"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["None", "None"]


# ---------------------------------------------------------------- doctor


def test_doctor_reports_the_stack() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "recis.cli", "doctor"], capture_output=True, text=True, timeout=300
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    import torch

    assert f"torch          {torch.__version__}" in out
    assert "fbgemm         fbgemm-gpu-cpu 1.8.0 (loads)" in out
    assert "torchrec       1.9.2" in out
    assert "native ops     id_mapper built, fused_backward built" in out
    for name in EXTRAS:
        assert f"extra {name}" in out
    assert out.rstrip().endswith("ok: the core stack fits together")


def test_doctor_names_what_is_missing(monkeypatch, tmp_path) -> None:
    from recis import doctor

    monkeypatch.setattr(build, "NATIVE_DIR", tmp_path)
    monkeypatch.setattr(doctor, "_version", lambda d: None if d == "trl" else _real_version(d))
    rep = doctor.diagnose()
    native = [p for p in rep.problems if p.startswith("native ops")]
    assert native == [
        "native ops id_mapper, fused_backward not built for this source and torch: " + build.REBUILD
    ]
    (note,) = [n for n in rep.notes if n.startswith("extra llm: ")]
    assert "trl" in note and note.endswith("missing: `make install EXTRAS=llm`")
    assert any("extra llm" in line and "trl missing" in line for line in rep.lines)


def _real_version(dist: str) -> str | None:
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None
