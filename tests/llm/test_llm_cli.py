"""``recis train`` / ``recis eval`` on a ``kind: relevance_llm`` config, end to end."""

from __future__ import annotations

import importlib.util
import json

import pyarrow.parquet as pq

from recis.cli import main


def write_config(tiny, tmp_path):
    run_dir = tmp_path / "run"
    cfg = tmp_path / "llm.yaml"
    cfg.write_text(
        f"""kind: relevance_llm
run_dir: {run_dir}
model: {{scratch: {{hidden_size: 32, layers: 1, heads: 2, vocab_size: 300}}}}
data: {{train: {tiny.train_file}, eval: {tiny.eval_file}, attributes: [brand], max_train: 16}}
levels: {{names: ["0", "1", "2", "3"], relevant_from: 2}}
stages:
  - {{kind: sft, max_steps: 2, batch_size: 4, learning_rate: 1.0e-3, logging_steps: 1}}
  - {{kind: grpo, max_steps: 1, batch_size: 4, num_generations: 4, max_completion_length: 6,
      prefilter: 2, pool: 8}}
"""
    )
    return cfg, run_dir


def test_bad_data_writes_nothing(tiny, tmp_path, capsys):
    cfg, run_dir = write_config(tiny, tmp_path)
    text = cfg.read_text().replace(str(tiny.train_file), str(tmp_path / "missing.parquet"))
    cfg.write_text(text)
    assert main(["train", str(cfg)]) == 2
    assert "missing.parquet: no such file" in capsys.readouterr().err
    assert not run_dir.exists()


def test_train_resume_and_eval(tiny, tmp_path, capsys):
    cfg, run_dir = write_config(tiny, tmp_path)
    assert main(["train", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("sft: ") and "\ngrpo: " in out and "auc" in out
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["split"] == "eval"]
    assert [r["stage"] for r in evals] == ["sft", "grpo"]
    assert all(0.0 <= r["auc"] <= 1.0 for r in evals)
    assert any(r["split"] == "train" and "reward" in r for r in records)  # the reward curve
    if importlib.util.find_spec("matplotlib"):
        assert (run_dir / "plots" / "relevance_llm.png").stat().st_size > 0
    # a second run into the same directory is refused; --resume skips the finished stages
    assert main(["train", str(cfg)]) == 2
    assert "--resume or --overwrite" in capsys.readouterr().err
    assert main(["train", str(cfg), "--resume", str(run_dir)]) == 0
    assert "sft: " in capsys.readouterr().out
    # recis eval scores the config's eval pairs with a stage's model, one pass per batch
    assert main(["eval", str(cfg), "--checkpoint", "sft"]) == 0
    assert "auc" in capsys.readouterr().out
    scores = pq.read_table(run_dir / "scores-sft.parquet").to_pydict()
    assert len(scores["score"]) == 32
    assert all(0.0 <= s <= 1.0 for s in scores["score"])
    assert all(abs(sum(p) - 1) < 1e-4 for p in zip(*(scores[f"p_{k}"] for k in "0123")))
    assert main(["eval", str(cfg), "--checkpoint", "nope"]) == 2
