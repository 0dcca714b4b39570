"""Query-rewrite synthesis: rewards against hand computations, curation rules, ``recis
synthesize`` end to end on a tiny scratch rewriter (SFT + GRPO with trl), and synthesized pairs
mixed into a retrieval config's training data."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recis.errors import OutputError
from recis.retrieval_rl.config import ExtraPairsConfig, PairsConfig
from recis.retrieval_rl.data import load_pairs
from recis.retrieval_rl.synth import COLUMNS, Candidates, curate
from recis.retrieval_rl.synth_config import build_config
from recis.retrieval_rl.synth_rewards import (
    DiversityReward,
    NewItemRelevanceReward,
    RetrievalGainReward,
    RetrievalJudge,
    trl_reward,
)


class _Fixed:
    """A retriever with fixed results per text (rows of a 5-item pool)."""

    name = "fixed"

    def __init__(self, results: dict[str, list[int]]) -> None:
        self.results = results

    def search(self, texts: Sequence[str], depth: int) -> list[np.ndarray]:
        return [np.asarray(self.results.get(t, [])[:depth], dtype=np.int64) for t in texts]


class _Table:
    """A relevance model given as a table of (query, item) scores (0 elsewhere)."""

    def __init__(self, table: dict[tuple[str, str], float]) -> None:
        self.table = table
        self.calls = 0

    def score(self, queries: Sequence[str], titles: Sequence[str]) -> torch.Tensor:
        self.calls += 1
        return torch.tensor([self.table.get((q, t), 0.0) for q, t in zip(queries, titles)])


POOL = ["p0", "p1", "p2", "p3", "p4"]
SCORES = {("q", "p0"): 0.5, ("q", "p1"): 0.2, ("q", "p2"): 0.9, ("q", "p3"): 0.4}
RESULTS = {"q": [0, 1], "ab": [1, 2], "abc": [3], "xy": [], "z": [4, 2]}


def _judge() -> tuple[RetrievalJudge, _Table]:
    table = _Table({**SCORES, ("z", "p4"): 1.0})
    return RetrievalJudge(_Fixed(RESULTS), table, POOL, depth=2), table


def test_rewards_match_hand_computation() -> None:
    judge, table = _judge()
    rewrites = [["ab", "abc", "xy"]]
    # rel@2(q, R(q)) = (0.5 + 0.2) / 2 = 0.35
    gain = RetrievalGainReward(judge)(["q"], rewrites)
    np.testing.assert_allclose(gain, [[(0.2 + 0.9) / 2 - 0.35, 0.4 / 2 - 0.35, -0.35]])
    new = NewItemRelevanceReward(judge)(["q"], rewrites)  # p1 is already in R(q)
    np.testing.assert_allclose(new, [[0.9 / 2, 0.4 / 2, 0.0]])
    # gram sets: ab {a,b,ab}, abc {a,b,c,ab,bc}, xy {x,y,xy}: J(ab,abc) = 3/5, others 0
    div = DiversityReward()(["q"], rewrites)
    np.testing.assert_allclose(div, [[1 - 0.3, 1 - 0.3, 1.0]])
    np.testing.assert_allclose(DiversityReward()(["q"], [["ab"]]), [[1.0]])
    judge.threshold = 0.45  # p1 (0.2) and p3 (0.4) now count 0: rel@2(q, R(q)) = 0.25
    np.testing.assert_allclose(RetrievalGainReward(judge)(["q"], rewrites), [[0.2, -0.25, -0.25]])
    calls = table.calls
    RetrievalGainReward(judge)(["q"], rewrites)
    assert table.calls == calls  # every (query, item) score is cached


def test_trl_reward_groups_rows_by_query() -> None:
    judge, _ = _judge()
    fn = trl_reward(NewItemRelevanceReward(judge), max_chars=8)
    assert fn.__name__ == "new_item_relevance"
    # trl's flat rows of two prompts; the completions are read up to their first line break
    got = fn(
        prompts=["P", "P", "Q", "Q"],
        completions=[" ab\nrest", "xy", " z ", "ab"],
        query=["q", "q", "z", "z"],
    )
    # query z: R(z) = [p4, p2]; rewrite "z" adds nothing; "ab" -> [p1, p2]: p1 new, s(z, p1) = 0
    np.testing.assert_allclose(got, [0.45, 0.0, 0.0, 0.0])


def _cfg(tmp_path: Path, **synth: object):  # noqa: ANN202
    return build_config(
        {
            "kind": "query_rewrite",
            "run_dir": str(tmp_path / "run"),
            "pairs": {"path": "unused.parquet"},
            "queries": {"path": "unused.parquet"},
            "retriever": {"depth": 2},
            "synth": {"out": str(tmp_path / "out.parquet"), **synth},
        }
    )


def test_curation_threshold_dedupe_known_and_cap(tmp_path: Path) -> None:
    judge, table = _judge()
    cands = Candidates.build(["q"], [[" ab", "ab\n", "q", "", "abc", "z"]], max_chars=8)
    assert cands.rewrites == [["ab", "abc", "z"]]  # copies, empties and the query itself dropped
    cfg = _cfg(tmp_path, min_relevance=0.3, max_pairs_per_query=2)
    got = curate(cands, judge.retriever, table, POOL, cfg, known={("q", "p2")})
    # found: ab -> p1 (0.2, below), p2 (known); abc -> p3 (0.4); z -> p4 (0.0, below), p2 known
    assert got["item"] == ["p3"] and got["rewrite"] == ["abc"] and got["rewrite_rank"] == [1]
    got = curate(cands, judge.retriever, table, POOL, cfg, known=set())
    assert got["item"] == ["p2", "p3"]  # best two by score; p2 kept once (its first finder, ab)
    assert got["rewrite"] == ["ab", "abc"] and got["retrieval_rank"] == [1, 0]
    np.testing.assert_allclose(got["relevance"], [0.9, 0.4], rtol=1e-6)
    cfg = _cfg(tmp_path, min_relevance=0.3, max_pairs_per_query=5, include_original=True)
    got = curate(cands, judge.retriever, table, POOL, cfg, known=set())
    assert got["item"] == ["p2", "p0", "p3"]
    assert got["source"] == ["rewrite", "original", "rewrite"]


WORDS = ["red", "blue", "green", "black", "white", "phone", "shoe", "lamp", "desk", "sofa"]


def _data(tmp_path: Path) -> dict[str, Path]:
    """Labelled pairs (dev: head queries; test: tail queries absent from dev), items, queries."""
    rng = np.random.default_rng(0)
    rows = []
    for split, n in (("dev", 30), ("test", 10)):
        for i in range(n):
            a, b = rng.choice(len(WORDS), 2, replace=False)
            q = f"{WORDS[a]} {WORDS[b]} {split[0]}{i}"
            rows.append((q, f"{WORDS[a]} {WORDS[b]} item {i % 7}", 1, split))
            rows.append((q, f"{WORDS[b]} {WORDS[(b + 3) % 10]} item {i % 5}", 0, split))
    t = pa.table(
        {k: [r[j] for r in rows] for j, k in enumerate(["query", "title", "label", "split"])}
    )
    pairs = tmp_path / "pairs.parquet"
    pq.write_table(t, pairs)
    qs = tmp_path / "queries.parquet"
    counts = [int(r[3] == "dev") for r in rows[::2]]
    pq.write_table(pa.table({"query": [r[0] for r in rows[::2]], "count": counts}), qs)
    return {"pairs": pairs, "queries": qs}


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pytest.importorskip("trl")
    from recis.cli import main

    tmp = tmp_path_factory.mktemp("synth")
    files = _data(tmp)
    cfg = tmp / "synth.yaml"
    cfg.write_text(
        f"""kind: query_rewrite
run_dir: {tmp / "run"}
pairs: {{path: {files["pairs"]}}}
queries: {{path: {files["queries"]}, count: count, tail_max_count: 0}}
model: {{scratch: {{hidden_size: 32, layers: 1, heads: 2, vocab_size: 300}}}}
sft: {{max_steps: 20, batch_size: 8, learning_rate: 5.0e-3}}
grpo: {{max_steps: 1, batch_size: 4, num_generations: 4, max_completion_length: 8, queries: 4}}
retriever: {{depth: 5}}
synth: {{out: {tmp / "pairs_synth.parquet"}, num_rewrites: 3, max_new_tokens: 8,
        min_relevance: 0.3, max_pairs_per_query: 3}}
"""
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: more threads only spin on a shared machine
    try:
        assert main(["synthesize", str(cfg)]) == 0
    finally:
        torch.set_num_threads(threads)
    log = json.loads((tmp / "run" / "log.json").read_text())  # before any test reruns it
    return {
        **files,
        "config": cfg,
        "out": tmp / "pairs_synth.parquet",
        "run": tmp / "run",
        "log": log,
    }


def test_synthesize_writes_curated_pairs_with_provenance(synthesized: dict[str, Any]) -> None:
    t = pq.read_table(synthesized["out"]).to_pylist()
    assert list(pq.read_schema(synthesized["out"]).names) == list(COLUMNS)
    assert t, "no pairs written"
    tail = {f"{q}" for q in pq.read_table(synthesized["queries"]).column("query").to_pylist()}
    tail = {q for q in tail if " t" in q}
    per: dict[str, int] = {}
    for r in t:
        assert r["query"] in tail  # only the long-tail queries (count 0)
        assert r["relevance"] >= 0.3 and r["source"] == "rewrite" and r["rewrite"]
        assert r["retriever"] == "bm25:depth=5" and r["rewriter"].endswith("grpo/model")
        assert len(r["rewriter_version"]) == 12 and r["created"].endswith("+00:00")
        per[r["query"]] = per.get(r["query"], 0) + 1
    assert max(per.values()) <= 3
    assert len({(r["query"], r["item"]) for r in t}) == len(t)  # no duplicate pair
    log = synthesized["log"]
    assert log["pairs"] == len(t) and log["queries"] == 10
    grpo = [x for x in log["stages"]["grpo"] if "rewards/retrieval_gain/mean" in x]
    assert grpo, "trl logged no retrieval_gain reward"


def test_sft_moves_the_loss(synthesized: dict[str, Any]) -> None:
    log = synthesized["log"]
    losses = [x["loss"] for x in log["stages"]["sft"] if "loss" in x]
    assert len(losses) >= 5
    assert losses[-1] < 0.7 * losses[0], losses


def test_synthesize_refuses_an_existing_output_and_resumes(synthesized: dict[str, Any]) -> None:
    from recis.retrieval_rl.synth_config import load_synth_config
    from recis.retrieval_rl.synth_run import synthesize

    cfg = load_synth_config(synthesized["config"])
    with pytest.raises(OutputError, match="synth.out exists"):
        synthesize(cfg, resume=True)
    before = (synthesized["run"] / "rewriter/grpo/model/model.safetensors").stat().st_mtime_ns
    rows = pq.read_table(synthesized["out"]).num_rows
    got = synthesize(cfg, resume=True, overwrite=True)  # the saved stages are not retrained
    assert got["stages"] == {} and got["pairs"] == rows  # same model, same seed: same pairs
    after = (synthesized["run"] / "rewriter/grpo/model/model.safetensors").stat().st_mtime_ns
    assert before == after


def test_config_mixes_synthesized_pairs_in(tmp_path: Path) -> None:
    files = _data(tmp_path)
    t = pq.read_table(files["pairs"]).to_pylist()
    tail, title = next((r["query"], r["title"]) for r in t if r["split"] == "test")
    extra = tmp_path / "extra.parquet"
    pq.write_table(
        pa.table(
            {
                "query": [tail, tail, "brand new query"],
                "item": [title, "a brand new item", title],
            }
        ),
        extra,
    )
    base = load_pairs(PairsConfig(path=str(files["pairs"]), train="dev", eval="test"))
    mixed = load_pairs(
        PairsConfig(
            path=str(files["pairs"]),
            train="dev",
            eval="test",
            extra_train=[ExtraPairsConfig(path=str(extra))],
        )
    )
    assert len(mixed.train_queries) == len(base.train_queries) + 3
    assert len(mixed.items) == len(base.items) + 1 and "a brand new item" in mixed.items
    assert len(mixed.queries) == len(base.queries) + 1
    last = [
        (mixed.queries[q], mixed.items[i])
        for q, i in zip(mixed.train_queries[-3:], mixed.train_items[-3:])
    ]
    assert last == [(tail, title), (tail, "a brand new item"), ("brand new query", title)]
    # not logged clicks: no seen-item exclusion, no click reward, no frequency change
    assert sum(len(p) for p in mixed.positives) == sum(len(p) for p in base.positives)
    assert mixed.query_count.sum() == base.query_count.sum()
    assert len(mixed.eval_queries) == len(base.eval_queries)


def test_dense_retriever_equals_brute_force() -> None:
    from recis.retrieval_rl.encoder import TextDualEncoder, TokenizedTexts
    from recis.retrieval_rl.synth_dense import DenseRetriever

    queries = ["red shoe", "blue lamp", "green desk sofa"]
    items = [f"{w} item {i}" for i, w in enumerate(WORDS * 3)]
    torch.manual_seed(0)
    model = TextDualEncoder(
        TokenizedTexts.build(queries, 256), TokenizedTexts.build(items, 256), 256, 8, 8
    )
    got = DenseRetriever(model, 256, chunk=2).search(queries, 5)
    with torch.no_grad():
        scores = model.encode_queries(torch.arange(3)) @ model.encode_pool().T
    want = scores.topk(5, dim=1).indices.numpy()
    np.testing.assert_array_equal(np.stack(got), want)
    assert DenseRetriever(model, 256).search([], 5) == []


def test_synthesize_flag_form_runs_a_trained_rewriter(
    synthesized: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from recis.cli import main

    out = tmp_path / "more.parquet"
    common = ["--items", str(synthesized["pairs"]), "--pairs", str(synthesized["pairs"])]
    assert main(["synthesize", "--model", str(synthesized["run"] / "rewriter/grpo/model")]) == 2
    assert "give a CONFIG or --queries, --items, --pairs, --out" in capsys.readouterr().err
    args = ["--queries", str(synthesized["queries"]), "--count-column", "count"]
    args += ["--tail-max-count", "0", "--min-relevance", "0.3", "--out", str(out), *common]
    args += ["--model", str(synthesized["run"] / "rewriter/grpo/model"), "--num-rewrites", "2"]
    assert main(["synthesize", *args]) == 0
    assert "queries 10, " in capsys.readouterr().out
    t = pq.read_table(out).to_pylist()
    assert t and all(r["rewriter"].endswith("grpo/model") and r["relevance"] >= 0.3 for r in t)
    assert (tmp_path / "more.parquet.run" / "log.json").is_file()
