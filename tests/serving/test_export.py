"""recis export: each format scores as recis eval does; INT8 tables; manifest; publish rules."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from safetensors import safe_open

from recis.cli import main
from recis.errors import CheckpointError, ConfigError
from recis.export import ExportOptions, ServingModel, export_run, read_latest, versions
from recis.export.parity import eval_parity
from recis.export.publish import PAUSE_ENV, prune_versions
from recis.export.tables import dequantize_rows, quantize_rows

ROOT = Path(__file__).resolve().parents[2]


def test_near_pair_share_counts_the_pairs_a_small_move_can_flip() -> None:
    from recis.export.parity import near_pair_share

    scores = np.array([0.50, 0.30, 0.505, 0.10, 0.31])
    labels = np.array([1.0, 1.0, 0.0, 0.0, 0.0])
    # pairs (pos, neg): (0.50, 0.505) and (0.30, 0.31) are within 0.01; 2 of 2 x 3
    assert near_pair_share(scores, labels, 0.01) == pytest.approx(2 / 6)
    assert near_pair_share(scores, labels, 0.001) == 0.0
    assert near_pair_share(scores, np.zeros(5), 1.0) == 0.0  # one class: nothing to flip


@pytest.mark.parametrize("fmt", ["export", "torchscript", "onnx"])
def test_each_format_scores_as_eval(dlrm_run: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "out"
    assert main(["export", str(dlrm_run), "--out", str(out), "--format", fmt]) == 0
    version = out / "v000001"
    assert read_latest(out) == "v000001" and (version / "READY").is_file()
    parity = eval_parity(dlrm_run, version)["click"]
    assert parity["rows"] == 600
    assert parity["max_abs_diff"] <= 1e-5, parity
    # the AUC moves only by pairs whose scores are closer than the export's rounding moves
    assert parity["auc_flip_bound"] < 1e-3, parity
    assert abs(parity["auc_export"] - parity["auc_eval"]) <= parity["auc_flip_bound"] + 1e-12
    # raw rows of the eval file (as JSON would carry them) through recis.io's conversion
    rows = pq.read_table(dlrm_run.parent / "data" / "eval").slice(0, 64).to_pylist()
    model = ServingModel(version)
    by_rows = model.score_rows([{k: v for k, v in r.items() if k != "label"} for r in rows])
    from recis.export.source import load_run

    _, trainer, _, _ = load_run(dlrm_run)
    assert trainer.eval_data is not None
    preds, _ = trainer.predict(trainer.eval_data)
    np.testing.assert_allclose(by_rows["click"], preds["click"][:64], atol=1e-5, rtol=0)


def test_int8_tables_smaller_and_close(dlrm_run: Path, tmp_path: Path) -> None:
    fp32 = export_run(dlrm_run, tmp_path / "out", ExportOptions(fmt="torchscript"))
    int8 = export_run(dlrm_run, tmp_path / "out", ExportOptions(fmt="torchscript", int8=True))
    assert int8.name == "v000002" and read_latest(tmp_path / "out") == "v000002"
    ratio = (int8 / "tables.safetensors").stat().st_size / (
        fp32 / "tables.safetensors"
    ).stat().st_size
    # dim 16: 16 code bytes + 4 (fp16 scale, bias) per row against 64, plus the 8-byte ids
    # in both (the id -> row map is not stored: (20 + 8) / (64 + 8) = 0.39 with the headers)
    assert 0.35 < ratio < 0.42, ratio
    stored = safe_open(str(int8 / "tables.safetensors"), "pt").keys()
    assert not [k for k in stored if k.endswith(".rows")] and "C1.ids" in stored
    parity = eval_parity(dlrm_run, int8)["click"]
    assert 0 < parity["max_abs_diff"] < 5e-3, parity
    assert abs(parity["auc_delta"]) < 5e-3, parity
    manifest = json.loads((int8 / "manifest.json").read_text())
    assert manifest["int8_embeddings"] is True and manifest["model"] == "dlrm"
    assert {"tables.safetensors", "dense.ts"} == set(manifest["files"])
    assert [d["name"] for d in manifest["schema"]["dense"]][:2] == ["I1", "I2"]
    assert manifest["schema"]["dense"][0]["transform"] == "log"


def test_quantize_rows_error_bound() -> None:
    import torch

    w = torch.randn(50, 16) * torch.rand(50, 1)
    w[3] = 0.25  # a constant row: scale 0, read back exactly
    q, scale, bias = quantize_rows(w)
    back = dequantize_rows(q, scale, bias)
    step = scale.float()[:, None]
    assert torch.all((back - w).abs() <= step * 0.5 + 2e-3 * w.abs().max(dim=1).values[:, None])
    assert torch.equal(back[3], w[3])


def test_changed_file_is_refused(dlrm_run: Path, tmp_path: Path) -> None:
    v = export_run(dlrm_run, tmp_path / "out", ExportOptions(fmt="torchscript"))
    # every file readable as a plain open() leaves it (safetensors alone writes 0600)
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in v.rglob("*") if p.is_file()}
    assert "tables.safetensors" in modes and set(modes.values()) == {0o666 & ~umask}, modes
    with open(v / "tables.safetensors", "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(CheckpointError, match="tables.safetensors"):
        ServingModel(v)


def test_keep_prunes_old_versions(tmp_path: Path) -> None:
    from recis.export.publish import publish

    def write(folder: Path) -> None:
        (folder / "x").write_text("x")

    out = tmp_path / "out"
    for _ in range(4):
        publish(out, write, keep=2)
    assert versions(out) == ["v000003", "v000004"] and read_latest(out) == "v000004"
    assert prune_versions(out, 1) == ["v000003"]


def test_sigkill_during_publish_keeps_latest(dlrm_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    export_run(dlrm_run, out, ExportOptions(fmt="torchscript"))
    code = (
        "import sys; from recis.cli import main; "
        f"sys.exit(main(['export', {str(dlrm_run)!r}, '--out', {str(out)!r}, "
        "'--format', 'torchscript']))"
    )
    env = {**os.environ, PAUSE_ENV: "60"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        deadline = time.monotonic() + 120
        while not (out / "v000002").is_dir():  # renamed into place, READY not yet written
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert read_latest(out) == "v000001"
    assert not (out / "v000002" / "READY").exists()
    # the next publish goes past the dead version and serves
    v3 = export_run(dlrm_run, out, ExportOptions(fmt="torchscript"))
    assert v3.name == "v000003" and read_latest(out) == "v000003"
    ServingModel(v3)


def test_delta_applied_equals_full_export(dlrm_run: Path, tmp_path: Path) -> None:
    import torch

    from recis.export.exporter import load_tables

    out = tmp_path / "out"
    step4 = str(dlrm_run / "checkpoints" / "step-00000004")
    v1 = export_run(dlrm_run, out, ExportOptions(fmt="torchscript", checkpoint=step4))
    assert v1.name == "v000001"
    v2 = export_run(dlrm_run, out, ExportOptions(fmt="torchscript", delta=True))
    manifest = json.loads((v2 / "manifest.json").read_text())
    assert manifest["delta"]["base"] == "v000001" and "delta.safetensors" in manifest["files"]
    assert "tables.safetensors" not in manifest["files"]
    assert prune_versions(out, 1) == []  # v000001 is the base of the latest version
    v3 = export_run(dlrm_run, out, ExportOptions(fmt="torchscript"))
    full = load_tables(v3, json.loads((v3 / "manifest.json").read_text()))
    applied = load_tables(v2, manifest)
    assert applied.keys() == full.keys()
    for k in full:
        assert torch.equal(applied[k], full[k]), k
    # the delta carries fewer rows than the full tables (training touched some ids only)
    live = sum(int(t["ids"]) for t in manifest["tables"])
    assert 0 < sum(manifest["delta"]["rows"].values()) < live, (manifest["delta"], live)
    rows = pq.read_table(dlrm_run.parent / "data" / "eval").slice(0, 32).to_pylist()
    rows = [{k: v for k, v in r.items() if k != "label"} for r in rows]
    a, b = ServingModel(v2).score_rows(rows)["click"], ServingModel(v3).score_rows(rows)["click"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, ServingModel(v1).score_rows(rows)["click"])


def test_delta_base_checked_at_export_and_load(dlrm_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    export_run(dlrm_run, out, ExportOptions(fmt="torchscript"))
    v2 = export_run(dlrm_run, out, ExportOptions(fmt="torchscript", delta=True))
    with pytest.raises(ConfigError, match="base v000002 has int8_embeddings=False"):
        export_run(dlrm_run, out, ExportOptions(fmt="torchscript", delta=True, int8=True))
    (out / "v000001" / "READY").unlink()
    with pytest.raises(CheckpointError, match=f"base {out / 'v000001'} is missing or not READY"):
        ServingModel(v2)
    # a delta on v000002 would load through v000001 too: refused before anything is written
    with pytest.raises(CheckpointError, match=f"base {out / 'v000001'} is missing"):
        export_run(dlrm_run, out, ExportOptions(fmt="torchscript", delta=True))
    assert versions(out) == ["v000001", "v000002"] and read_latest(out) == "v000002"


def test_unknown_ids_fall_back_as_in_training(dlrm_run: Path, tmp_path: Path) -> None:
    import torch

    from recis.export.source import load_run

    v = export_run(dlrm_run, tmp_path / "out", ExportOptions(fmt="torchscript"))
    rows = pq.read_table(dlrm_run.parent / "data" / "eval").slice(0, 8).to_pylist()
    rows = [{k: v for k, v in r.items() if k != "label"} for r in rows]
    for i, r in enumerate(rows):  # ids no table has seen, in some or all columns
        for c in [f"C{j}" for j in range(1, 27)][: 4 + 3 * i]:
            r[c] = 10**12 + 7 * i + int(c[1:])
    model = ServingModel(v)
    batch = model.rows_batch(rows)
    _, trainer, _, _ = load_run(dlrm_run)
    with torch.no_grad():
        ref = torch.sigmoid(trainer.model(batch)["click"]).numpy()
    np.testing.assert_allclose(model.score_batch(batch)["click"], ref, atol=1e-6, rtol=0)
