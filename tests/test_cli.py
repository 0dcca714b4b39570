"""The recis command line, end to end: train, eval, errors as one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from recis.cli import main

EXAMPLE = Path("examples/dlrm_synthetic.yaml")


def _small_config(tmp_path: Path) -> Path:
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["run_dir"] = str(tmp_path / "run")
    raw["data"]["path"] = str(tmp_path / "data")
    raw["data"]["synthetic"].update(num_train=6000, num_eval=3000, files=2)
    raw["data"]["batch_size"] = 256
    raw["train"].update(epochs=1, progress=False, log_every=5)
    cfg = tmp_path / "small.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    return cfg


def test_train_then_eval(tmp_path, capsys):
    cfg = _small_config(tmp_path)
    assert main(["train", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "click/auc" in out and "oracle_auc" in out
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r["split"] == "train" and "loss" in r for r in records)
    evals = [r for r in records if r["split"] == "eval"]
    result = json.loads((run / "eval.json").read_text())
    assert evals[-1]["click/auc"] == result["click/auc"]
    assert 0.6 < result["click/auc"] <= result["oracle_auc"] + 0.01
    # the saved config reloads and evaluating the final checkpoint gives the same AUC
    assert (
        main(["eval", str(run / "config.yaml"), "--checkpoint", str(run / "checkpoints/final")])
        == 0
    )
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "click/auc" in line)
    assert abs(float(line.split()[-1]) - result["click/auc"]) < 1e-4


def test_typo_exits_nonzero_with_one_line(tmp_path):
    cfg = tmp_path / "typo.yaml"
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["train"]["epohcs"] = 2
    cfg.write_text(yaml.safe_dump(raw))
    proc = subprocess.run(
        [sys.executable, "-m", "recis.cli", "train", str(cfg)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "recis: error: train.epohcs: unknown field (did you mean 'epochs'?)"
    )
    assert "Traceback" not in proc.stderr


def test_help_lists_commands():
    proc = subprocess.run(
        [sys.executable, "-m", "recis.cli", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0
    assert "train" in proc.stdout and "eval" in proc.stdout
