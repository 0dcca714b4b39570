"""``recis train`` / ``recis eval`` on a ``kind: relevance_llm`` config, end to end."""

from __future__ import annotations

import importlib.util
import json

import pyarrow.parquet as pq
import pytest

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
tensorboard: true
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
    if importlib.util.find_spec("tensorboard"):  # the same curves in TensorBoard's event files
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        tb = EventAccumulator(str(run_dir / "tb"))
        tb.Reload()
        for split, key in (("train", "reward"), ("train", "loss"), ("eval", "auc")):
            want = [(r["step"], r[key]) for r in records if r["split"] == split and key in r]
            got = [(e.step, e.value) for e in tb.Scalars(f"{split}/{key}")]
            assert want and [s for s, _ in got] == [s for s, _ in want]
            assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)
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


def test_dense_retriever_from_a_trained_dual_encoder(tiny, tmp_path, capsys):
    """``retriever.kind: dense``: ``recis train`` / ``recis eval`` load the dual encoder of a
    ``retrieval_grpo`` run; from Python the retriever is passed to the pipeline, and the chunks
    attached are the loaded encoder's best (checked against the encoder by hand)."""
    import numpy as np
    import pyarrow as pa
    import torch
    import yaml

    from recis.errors import ConfigError
    from recis.llm.config import load_llm_config
    from recis.llm.pipeline import Pipeline
    from recis.llm.retrieval import read_corpus
    from recis.retrieval_rl.chunks import DenseChunkRetriever
    from recis.retrieval_rl.encoder import TokenizedTexts
    from recis.retrieval_rl.synth_dense import load_encoder

    pairs = tmp_path / "pairs.parquet"
    rows = [
        {"query": e.query, "title": e.title, "label": int(e.label >= 2), "split": "dev"}
        for e in tiny.examples
    ]
    pq.write_table(pa.Table.from_pylist(rows), pairs)
    rrl = tmp_path / "dual.yaml"
    rrl.write_text(
        f"kind: retrieval_grpo\nrun_dir: {tmp_path / 'dual'}\n"
        f"data: {{path: {pairs}, split: null}}\n"
        "encoder: {buckets: 512, width: 16, dim: 16}\n"
        "infonce: {steps: 20, batch_size: 16}\ngrpo: {steps: 0}\n"
    )
    assert main(["train", str(rrl)]) == 0
    cfg_path, run_dir = write_config(tiny, tmp_path)
    raw = yaml.safe_load(cfg_path.read_text())
    raw["stages"] = [{"kind": "sft", "max_steps": 1, "batch_size": 4}]
    raw["retriever"] = {"corpus": str(tiny.corpus_file), "kind": "dense", "run_config": str(rrl)}
    cfg_path.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert main(["train", str(cfg_path)]) == 0
    assert main(["eval", str(cfg_path), "--checkpoint", "sft"]) == 0
    assert "auc" in capsys.readouterr().out
    # a served version carries a BM25 retriever only: export refuses, naming the field
    assert main(["export", str(run_dir), "--out", str(tmp_path / "version")]) == 2
    assert "retriever.kind: dense" in capsys.readouterr().err

    cfg = load_llm_config(cfg_path, [f"run_dir={tmp_path / 'py'}"])
    with pytest.raises(ConfigError, match=r"retriever\.kind: dense"):
        Pipeline(cfg)  # this layer has no dense loader of its own
    assert cfg.retriever is not None
    pipe = Pipeline(cfg, retriever=DenseChunkRetriever.from_config(cfg.retriever))
    model, buckets, _, _ = load_encoder(str(rrl), "infonce")
    corpus, queries = read_corpus(cfg.retriever), [e.query for e in pipe.train]
    with torch.no_grad():  # by hand: the trained towers on every query and chunk at once
        u = model.query_tower(*TokenizedTexts.build(queries, buckets).take(np.arange(len(queries))))
        v = model.item_tower(*TokenizedTexts.build(corpus, buckets).take(np.arange(len(corpus))))
    order = (u @ v.T).argsort(dim=1, descending=True)[:, :2].tolist()
    want = [
        next((corpus[i] for i in idx if corpus[i] != e.title), "")
        for e, idx in zip(pipe.train, order)
    ]
    assert [e.context for e in pipe.train] == want
    assert len(set(want)) > 1  # queries get different chunks
