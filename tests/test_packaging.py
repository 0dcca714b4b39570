"""io/, ops/ and models/ install as recis.io, recis.ops, recis.models (editable and wheel)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_from_another_directory(tmp_path):
    code = (
        "import recis.io, recis.ops, recis.models, io; print(recis.io.__file__); print(io.__file__)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    ours, stdlib = proc.stdout.split()
    assert Path(ours).parent.name == "io"
    assert "site-packages" not in stdlib  # the standard library io is not shadowed


def test_wheel_maps_sibling_folders(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("recis-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in (
        "recis/io/batch.py",
        "recis/ops/hashing.py",
        "recis/models/dlrm.py",
        "recis/cli.py",
        "recis/train/trainer.py",
        "recis/ops/build.py",
        "recis/ops/csrc/id_mapper.cpp",
    ):
        assert module in names, module
    # the native ops built in place by `make install` travel in the wheel
    from recis.ops import build

    for name, ext in build.EXTENSIONS.items():
        if build.status(name) == "built":
            assert f"recis/ops/_native/{build.built_path(ext).name}" in names, name
    assert not any(n.startswith(("io/", "ops/", "models/")) for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "recis = recis.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_config_typos_plots_and_splits_answer_before_torch_loads(tmp_path):
    """A misspelt field is reported, a run's metrics are plotted and a log is split without
    importing torch (7-10 s on a 2-core machine): the train sections are checked before the
    model zoo loads, and recis.train and recis.io resolve their names on first use."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cfg = tmp_path / "typo.yaml"
    cfg.write_text(
        (ROOT / "examples" / "dlrm_synthetic.yaml").read_text().replace("  epochs:", "  epohcs:")
    )
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 0.5}\n')
    log = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user": [1, 1, 2, 2], "ts": [1, 2, 1, 2]}), log)
    split = [
        "split",
        str(log),
        "--out",
        str(tmp_path / "parts"),
        "--by",
        "leave-last-out",
        "--user",
        "user",
    ]
    code = (
        "import sys; from recis.cli import main\n"
        f"typo = main(['train', {str(cfg)!r}])\n"
        f"plot = main(['plot', {str(run)!r}])\n"
        f"split = main({split!r} + ['--time', 'ts'])\n"
        "print(typo, plot, split, 'torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.split()[-4:] == ["2", "0", "0", "False"], proc.stdout + proc.stderr
    assert pq.read_table(tmp_path / "parts" / "test.parquet").column("ts").to_pylist() == [2, 2]
    assert "train.epohcs: unknown field (did you mean 'epochs'?)" in proc.stderr
    assert (run / "plots" / "loss.png").stat().st_size > 0
    import recis.io
    import recis.train  # the lazy names resolve to the modules' objects

    assert recis.train.Trainer is __import__("recis.train.trainer", fromlist=["_"]).Trainer
    assert recis.io.Reader is __import__("recis.io.reader", fromlist=["_"]).Reader
    for package in (recis.io, recis.train):
        assert sorted(package.__all__) == sorted(package._HOME)
