"""`recis train CONFIG`, `--resume RUN_DIR` and `recis plot RUN_DIR` on the example config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recis.cli import main
from recis.train import load_checkpoint
from recis.train.runlog import read_records

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_train_resume_plot(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    config = str(ROOT / "examples" / "multitask_synthetic.yaml")
    small = [
        f"run_dir={run}",
        f"data.path={tmp_path / 'data'}",
        "data.synthetic.num_train=6000",
        "data.synthetic.num_eval=2000",
        "data.synthetic.files=2",
        "data.batch_size=256",
        "threads=1",
        "train.progress=false",
        "train.priority.stage_steps=5",
        "train.eval_every=10",
        "train.checkpoint_every=10",
    ]
    args = [a for s in small for a in ("--set", s)]
    assert main(["train", config, *args, "--set", "train.max_steps=20"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert {"click/auc", "click/gauc", "conversion/auc", "click/oracle_auc"} <= result.keys()
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["final", "step-00000010", "step-00000020"]
    final = run / "checkpoints" / "final" / "model.safetensors"
    step20 = run / "checkpoints" / "step-00000020" / "model.safetensors"
    assert final.stat().st_ino == step20.stat().st_ino  # hard links
    state, _ = load_checkpoint(run / "checkpoints" / "step-00000020")
    assert {"model", "optimizers", "objective", "data", "rng", "scheduler"} <= state.keys()
    assert "lambda" in state["objective"] and state["step"] == 20

    # the same run directory again: refused without --resume / --overwrite, nothing touched
    before = (run / "metrics.jsonl").read_bytes()
    assert main(["train", config, *args, "--set", "train.max_steps=30"]) == 2
    assert "holds a previous run" in capsys.readouterr().err
    assert (run / "metrics.jsonl").read_bytes() == before
    assert main(["train", config, *args, "--set", "train.max_steps=30", "--resume", str(run)]) == 0
    assert "resumed from" in capsys.readouterr().out
    records = read_records(run)
    steps = [r["step"] for r in records if r["split"] == "train"]
    assert steps == list(range(1, 31))  # continued at 21, no step twice
    assert [r["step"] for r in records if r["split"] == "eval"] == [10, 20, 30]
    assert any(p.name.startswith("events.") for p in (run / "tb").iterdir())

    assert load_checkpoint(run / "checkpoints" / "final")[0]["step"] == 30
    # `recis eval` of the run's checkpoints (100 rows: other numbers than the training's)
    # logs under its own split and leaves the training's history as it was
    history = read_records(run)
    raw = (run / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    for ckpt in ("final", "step-00000020"):
        one = ["--set", "train.eval_batches=1", "--set", "data.eval_batch_size=100"]
        assert (
            main(["eval", config, *args, *one, "--checkpoint", str(run / "checkpoints" / ckpt)])
            == 0
        )
    printed = capsys.readouterr().out
    assert (run / "metrics.jsonl").read_bytes().startswith(raw)
    after = read_records(run)
    assert [r for r in after if not r["split"].startswith("eval:")] == history
    standalone = [r for r in after if r["split"].startswith("eval:")]
    assert [(r["split"], r["step"]) for r in standalone] == [
        (f"eval:{tmp_path / 'data' / 'eval'}", 20),
        (f"eval:{tmp_path / 'data' / 'eval'}", 30),
    ]
    train_eval30 = next(r for r in history if r["split"] == "eval" and r["step"] == 30)
    assert standalone[1]["click/auc"] != train_eval30["click/auc"]  # 1 batch vs all
    assert f"{standalone[0]['click/auc']:.4f}" in printed
    assert main(["plot", str(run)]) == 0
    for name in ("loss.png", "multipliers.png", "eval_click.png", "eval_conversion.png"):
        png = run / "plots" / name
        assert png.read_bytes()[:4] == b"\x89PNG", name
    assert main(["plot", str(tmp_path / "nothing")]) == 2
