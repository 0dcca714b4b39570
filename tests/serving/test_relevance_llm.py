"""Relevance-LLM export: the decoder and the level-token head score rows as ``recis eval``
does (the BM25 chunk of the run's retriever included), over a real HTTP server too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file

pytest.importorskip("trl")

from recis.cli import main  # noqa: E402
from recis.errors import ConfigError  # noqa: E402
from recis.export import ExportOptions, RelevanceLLMModel, export_run, read_manifest  # noqa: E402
from recis.export.relevance_llm import check_head  # noqa: E402
from recis.llm.config import LevelsConfig, PromptConfig  # noqa: E402
from recis.llm.task import RelevanceTask  # noqa: E402


def write_pairs(path: Path, rows: list[dict[str, Any]]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture(scope="module")
def llm_run(tmp_path_factory: pytest.TempPathFactory, rule_pairs: Any, rule_words: Any) -> Path:
    """A relevance-LLM run (scratch 1-layer Llama, a few SFT steps) with a BM25 retriever."""
    root = tmp_path_factory.mktemp("relevance_llm")
    corpus = root / "corpus.parquet"
    pq.write_table(pa.table({"text": [f"{w} is sold here" for w in rule_words]}), corpus)
    cfg = root / "llm.yaml"
    cfg.write_text(
        f"""kind: relevance_llm
run_dir: {root / "run"}
model: {{scratch: {{hidden_size: 32, layers: 1, heads: 2, vocab_size: 300}}}}
data: {{train: {write_pairs(root / "train.parquet", rule_pairs(32, 0))},
        eval: {write_pairs(root / "eval.parquet", rule_pairs(24, 1))}, attributes: [brand]}}
retriever: {{corpus: {corpus}}}
stages:
  - {{kind: sft, max_steps: 3, batch_size: 4, learning_rate: 1.0e-3, logging_steps: 1}}
"""
    )
    assert main(["train", str(cfg)]) == 0
    assert main(["eval", str(cfg), "--checkpoint", "sft"]) == 0  # scores-sft.parquet
    return root / "run"


@pytest.fixture(scope="module")
def llm_server(
    llm_run: Path, tmp_path_factory: pytest.TempPathFactory, serve_export: Any
) -> Iterator[Any]:
    yield from serve_export(llm_run, tmp_path_factory.mktemp("llm_published"))


def eval_rows(run: Path) -> list[dict[str, Any]]:
    rows = pq.read_table(run.parent / "eval.parquet").to_pylist()
    return [{k: r[k] for k in ("query", "title", "brand")} for r in rows]


def test_exported_head_scores_as_eval(llm_server: Any) -> None:
    version = llm_server.out / "v000001"
    m = read_manifest(version)
    assert m["model"] == "relevance_llm" and m["source"]["stage"] == "sft"
    assert m["tasks"] == [{"name": "relevance", "loss": "levels"}]
    spec = m["relevance_llm"]
    assert spec["retriever"]["corpus"] in m["files"]
    # the head keeps the 4 level-token rows of the LM head, not the vocabulary
    head = load_file(str(version / "head.safetensors"))
    assert head["weight"].shape == (4, 32) and len(spec["level_token_ids"]) == 4
    assert any(f.startswith("llm/") and f.endswith(".safetensors") for f in m["files"])
    got = RelevanceLLMModel(version).score_rows(eval_rows(llm_server.run))
    want = pq.read_table(llm_server.run / "scores-sft.parquet").to_pydict()
    np.testing.assert_allclose(got["relevance"], want["score"], atol=1e-5)
    for k in "0123":
        np.testing.assert_allclose(got[f"p_{k}"], want[f"p_{k}"], atol=1e-5)
    # the scores are not a constant: the parity above compares something
    assert np.ptp(got["relevance"]) > 1e-4


def test_served_over_http_with_clear_errors(llm_server: Any) -> None:
    rows = eval_rows(llm_server.run)[:5]
    status, body = llm_server.score(rows)
    assert status == 200, body
    want = pq.read_table(llm_server.run / "scores-sft.parquet").to_pydict()["score"][:5]
    np.testing.assert_allclose(body["scores"]["relevance"], want, atol=1e-5)
    assert llm_server.call("/health")[1]["tasks"] == ["relevance"]
    # concurrent requests are batched (--batch-ms 30): one forward for several, same answers
    scores, forwards = llm_server.score_concurrently(rows, 4, "relevance")
    assert forwards < 4
    for i in range(4):
        np.testing.assert_allclose(scores[i], want[i : i + 2], atol=1e-5)
    status, body = llm_server.score([{"title": "red cup", "brand": "ikea"}])
    assert status == 422 and body["field"] == "query", body
    status, body = llm_server.score([{"query": "red", "title": ["red", "cup"]}])
    assert status == 422 and body["field"] == "title", body
    # no item index: /topk is a 404, not a crash
    assert llm_server.call("/topk", {"rows": rows, "k": 2})[0] == 404


def test_refused_options(llm_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--int8-embeddings"):
        export_run(llm_run, tmp_path / "a", ExportOptions(int8=True))
    with pytest.raises(ConfigError, match="--format"):
        export_run(llm_run, tmp_path / "b", ExportOptions(fmt="onnx"))
    assert main(["export", str(llm_run), "--out", str(tmp_path / "c"), "--checkpoint", "no"]) == 2
    assert not (tmp_path / "c" / "latest").exists()


def test_a_logit_transform_after_the_head_is_refused(tmp_path: Path) -> None:
    from transformers import CohereConfig, CohereForCausalLM

    from recis.llm.model import train_tokenizer

    tok = train_tokenizer(["query: red cup\nitem: blue lamp\nlevel=0 1 2 3"] * 4, 300)
    config = CohereConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        logit_scale=0.5,  # Cohere scales the head's logits
    )
    model = CohereForCausalLM(config).eval()
    task = RelevanceTask(PromptConfig(rationale=False), LevelsConfig())
    ids = [tok.encode(n, add_special_tokens=False)[0] for n in task.levels.names]
    head = {"weight": model.get_output_embeddings().weight.detach()[ids].float()}
    from recis.export.relevance_llm import HeadScorer

    with pytest.raises(ConfigError, match="post-head transform"):
        check_head(model, HeadScorer(model.base_model, head), tok, task, ids, tmp_path)
    # the same head with the scale folded in would pass: the check compares real logits
    folded = {"weight": head["weight"] * 0.5}
    check_head(model, HeadScorer(model.base_model, folded), tok, task, ids, tmp_path)


def test_a_published_relevance_llm_rewards_retrieval_grpo(
    llm_server: Any, dlrm_run: Path, tmp_path: Path
) -> None:
    """``grpo.rewards.relevance_model``: the exported LLM scores the relevance reward and
    judges relevance@K, as it scores the same pairs in ``recis eval``."""
    import json

    from recis.retrieval_rl.config import build_config
    from recis.retrieval_rl.pipeline import train
    from recis.retrieval_rl.rewards import PublishedRelevanceScorer

    scorer = PublishedRelevanceScorer(str(llm_server.out))  # the export folder: latest
    want = pq.read_table(llm_server.run / "scores-sft.parquet").to_pydict()
    got = scorer.score(want["query"], want["title"])
    # a bare (query, title) pair: the served score of a row without the brand attribute
    pairs_only = [{"query": q, "title": t} for q, t in zip(want["query"], want["title"])]
    served = RelevanceLLMModel(llm_server.out / "v000001").score_rows(pairs_only)
    np.testing.assert_allclose(got.numpy(), served["relevance"], atol=1e-6)
    # the run directory itself (its last stage in memory) scores as its export
    direct = PublishedRelevanceScorer(str(llm_server.run)).score(want["query"], want["title"])
    np.testing.assert_allclose(direct.numpy(), got.numpy(), atol=1e-6)
    # a retrieval_grpo run rewarded by it: every step's relevance reward is the LLM's score
    rows = pq.read_table(llm_server.run.parent / "train.parquet").to_pylist()
    pairs = pa.table(
        {
            "query": [r["query"] for r in rows],
            "title": [r["title"] for r in rows],
            "label": [int(r["label"] >= 2) for r in rows],
            "split": ["dev" if i % 4 else "test_public" for i in range(len(rows))],
        }
    )
    pq.write_table(pairs, tmp_path / "pairs.parquet")
    cfg = build_config(
        {
            "kind": "retrieval_grpo",
            "run_dir": str(tmp_path / "run"),
            "data": {"path": str(tmp_path / "pairs.parquet")},
            "encoder": {"buckets": 256, "width": 8, "dim": 8},
            "infonce": {"steps": 2, "batch_size": 8},
            "grpo": {
                "steps": 2,
                "batch_size": 4,
                "k": 4,
                "rewards": {"relevance": 1.0, "click": 0.0, "relevance_model": str(llm_server.out)},
            },
            "eval": {"ks": [5], "relevance_k": 3},
        }
    )
    results = train(cfg)
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    rewards = [r["reward_relevance"] for r in log if "reward_relevance" in r]
    assert len(rewards) == 2 and all(0.0 < r < 1.0 for r in rewards)
    # relevance@3 is the LLM's mean score of retrieved pairs: within the range of its scores
    lo, hi = float(np.min(want["score"])) - 0.05, float(np.max(want["score"])) + 0.05
    assert lo < results["grpo"]["relevance@3"] < hi
    # a CTR version scores no text pairs: refused by name
    out = tmp_path / "dlrm_export"
    assert main(["export", str(dlrm_run), "--out", str(out)]) == 0
    with pytest.raises(ConfigError, match="not a relevance version"):
        PublishedRelevanceScorer(str(out))
