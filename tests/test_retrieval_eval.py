"""Full-corpus retrieval evaluation with seen-item exclusion, against rankings done by hand."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recis import metrics


def test_seen_items_are_excluded_against_a_hand_ranking() -> None:
    # corpus of 6 items; the user saw items 0 and 3 in training; the test item is 4
    scores = np.array([[0.9, 0.1, 0.5, 0.8, 0.7, 0.2]])
    # ranking of the unseen items by hand: 4 (0.7), 2 (0.5), 5 (0.2), 1 (0.1) -> rank 0
    got = metrics.ranking_metrics(scores, [np.array([4])], [np.array([0, 3])], ks=(1, 2))
    assert got["hr@1"][0] == 1.0 and got["ndcg@1"][0] == 1.0 and got["mrr@1"][0] == 1.0
    # without the exclusion, items 0 and 3 rank ahead of it: rank 2, a miss at K=2
    plain = metrics.ranking_metrics(scores, [np.array([4])], None, ks=(1, 2, 3))
    assert plain["hr@2"][0] == 0.0 and plain["hr@3"][0] == 1.0
    assert plain["ndcg@3"][0] == pytest.approx(1 / math.log2(4))
    assert plain["mrr@3"][0] == pytest.approx(1 / 3)
    # test item 1 after exclusion: behind 4, 2, 5 -> rank 3 (0-based)
    late = metrics.ranking_metrics(scores, [np.array([1])], [np.array([0, 3])], ks=(3, 4))
    assert late["hr@3"][0] == 0.0 and late["hr@4"][0] == 1.0
    assert late["ndcg@4"][0] == pytest.approx(1 / math.log2(5))
    assert late["mrr@4"][0] == pytest.approx(1 / 4)


def test_an_excluded_or_unknown_test_item_is_a_miss() -> None:
    scores = np.array([[0.9, 0.1, 0.5], [0.9, 0.1, 0.5]])
    got = metrics.ranking_metrics(scores, [np.array([0]), np.array([-1])], [np.array([0]), []])
    for name in ("hr@10", "recall@10", "ndcg@10", "mrr@10"):
        assert got[name].tolist() == [0.0, 0.0]


def test_ties_match_the_readme_expectation() -> None:
    # ml_latest_small/baselines.py: rank ~ U{g, ..., g+e}, expected HR and NDCG
    scores = np.array([[3.0, 2.0, 2.0, 2.0, 2.0, 1.0]])
    got = metrics.ranking_metrics(scores, [np.array([2])], None, ks=(3,))
    g, e, k = 1, 3, 3  # one item ahead, three others tied with the test item
    ranks = np.arange(g, min(g + e, k - 1) + 1)
    assert got["hr@3"][0] == pytest.approx(len(ranks) / (e + 1))
    assert got["ndcg@3"][0] == pytest.approx((1 / np.log2(ranks + 2)).sum() / (e + 1))


def _brute_force(scores: np.ndarray, rel: set[int], exclude: set[int], k: int) -> dict[str, float]:
    """Average each metric over every order of the tied items (the definition, by hand)."""
    cand = [i for i in range(len(scores)) if i not in exclude]
    levels = sorted({scores[i] for i in cand}, reverse=True)
    blocks = [[i for i in cand if scores[i] == s] for s in levels]
    totals = {"hr": 0.0, "recall": 0.0, "ndcg": 0.0, "mrr": 0.0}
    count = 0
    ideal = sum(1 / math.log2(r + 2) for r in range(min(k, len(rel))))
    for orders in itertools.product(*(itertools.permutations(b) for b in blocks)):
        ranking = [i for block in orders for i in block][:k]
        hits = [r for r, i in enumerate(ranking) if i in rel]
        totals["hr"] += 1.0 if hits else 0.0
        totals["recall"] += len(hits) / len(rel)
        totals["ndcg"] += sum(1 / math.log2(r + 2) for r in hits) / ideal
        totals["mrr"] += 1 / (hits[0] + 1) if hits else 0.0
        count += 1
    return {m: v / count for m, v in totals.items()}


@pytest.mark.parametrize("seed", range(6))
def test_several_relevant_items_with_ties_match_every_tie_order(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 8
    scores = rng.integers(0, 3, size=n).astype(np.float64)  # heavy ties
    rel = set(rng.choice(n, size=int(rng.integers(1, 4)), replace=False).tolist())
    exclude = set(rng.choice([i for i in range(n) if i not in rel], size=2, replace=False).tolist())
    for k in (1, 2, 4):
        got = metrics.ranking_metrics(
            scores[None, :], [np.array(sorted(rel))], [np.array(sorted(exclude))], ks=(k,)
        )
        want = _brute_force(scores, rel, exclude, k)
        for m, v in want.items():
            assert got[f"{m}@{k}"][0] == pytest.approx(v, abs=1e-12), (m, k)


# ---- the two-tower's full-corpus evaluation, end to end -------------------------------


def _interactions(tmp_path, n_users: int = 24, per_user: int = 6, n_items: int = 40):
    """train / valid parquet rows (user_id, hist, item_id, label) of a random log."""
    rng = np.random.default_rng(0)
    rows = {"train": [], "valid": []}
    for u in range(n_users):
        seq = rng.choice(n_items, size=per_user, replace=False) + 1000
        for pos in range(per_user - 1):
            rows["train"].append((u, seq[:pos].tolist(), int(seq[pos])))
        rows["valid"].append((u, seq[:-1].tolist(), int(seq[-1])))
    paths = {}
    for name, rs in rows.items():
        table = pa.table(
            {
                "user_id": pa.array([r[0] for r in rs], pa.int64()),
                "hist": pa.array([r[1] for r in rs], pa.list_(pa.int64())),
                "item_id": pa.array([r[2] for r in rs], pa.int64()),
                "label": pa.array(np.ones(len(rs)), pa.float32()),
            }
        )
        paths[name] = tmp_path / f"{name}.parquet"
        pq.write_table(table, paths[name])
    return paths, rows


def _config(tmp_path, paths, exclude_seen: bool = True, sequence: bool = False) -> dict:
    query = (
        {"sparse": ["user_id"], "sequence": ["hist"]}
        if sequence
        else {"sparse": ["user_id", "hist"]}
    )
    return {
        "run_dir": str(tmp_path / "run"),
        "data": {
            "train": str(paths["train"]),
            "eval": str(paths["valid"]),
            "batch_size": 16,
            "eval_batch_size": 7,  # several eval batches
            "schema": {
                "labels": [{"name": "click", "column": "label"}],
                "sparse": [
                    {"name": "user_id", "table": "user"},
                    {"name": "hist", "table": "hist", "max_len": 8},
                    {"name": "item_id", "table": "item"},
                ],
            },
        },
        "model": {
            "name": "two_tower",
            "query": {**query, "mlp": [16]},
            "item": {"sparse": ["item_id"], "mlp": [16]},
            "dim": 8,
            "tables": [
                {"name": "user", "dim": 8, "capacity": 64},
                {"name": "hist", "dim": 8, "capacity": 128, "pooling": "mean"},
                {"name": "item", "dim": 8, "capacity": 128},
            ],
            "retrieval_eval": {
                "seen": str(paths["train"]),
                "user": "user_id",
                "ks": [5, 10],
                "exclude_seen": exclude_seen,
            },
        },
        "train": {"epochs": 1, "progress": False, "tensorboard": False},
    }


def _by_hand(model, paths, rows, k: int, exclude_seen: bool = True) -> tuple[float, float]:
    """HR@k / NDCG@k from the model's own vectors, ranking done here with numpy."""
    from recis.features import Schema, SparseFeature
    from recis.io import make_reader

    schema = Schema(
        sparse=[
            SparseFeature(name="user_id", table="user"),
            SparseFeature(name="hist", table="hist", max_len=8),
            SparseFeature(name="item_id", table="item"),
        ]
    )
    model.eval()
    with torch.no_grad():
        items = sorted({r[2] for r in rows["train"]})
        vec = {}
        for batch in make_reader(paths["train"], schema, batch_size=1000, prefetch=0):
            for i, v in zip(model.item_ids(batch).tolist(), model.encode_items(batch)):
                vec[i] = v
        corpus = torch.stack([vec[i] for i in items])
        seen = {}
        for u, _, i in rows["train"]:
            seen.setdefault(u, set()).add(i)
        hr = ndcg = 0.0
        for batch in make_reader(paths["valid"], schema, batch_size=1000, prefetch=0):
            scores = (model.encode_queries(batch) @ corpus.T).numpy()
            for q, (u, t) in enumerate(
                zip(batch.sparse["user_id"].values().tolist(), model.item_ids(batch).tolist())
            ):
                if t not in items:
                    continue
                ranking = [items[j] for j in np.argsort(-scores[q], kind="stable")]
                if exclude_seen:
                    ranking = [i for i in ranking if i not in seen[u]]
                rank = ranking.index(t)
                if rank < k:
                    hr += 1.0
                    ndcg += 1.0 / math.log2(rank + 2)
    n = len(rows["valid"])
    return hr / n, ndcg / n


@pytest.mark.parametrize("exclude_seen,sequence", [(True, False), (False, True)])
def test_two_tower_full_corpus_eval_matches_a_hand_ranking(
    tmp_path, exclude_seen: bool, sequence: bool
) -> None:
    from recis.config import build_run_config
    from recis.train import runner

    paths, rows = _interactions(tmp_path)
    cfg = build_run_config(_config(tmp_path, paths, exclude_seen, sequence))
    trainer, _ = runner.build(cfg)
    for batch in trainer.train_data:  # some training, so that the ranking is not arbitrary
        trainer.train_step(batch)
    result = trainer.evaluate()
    for k in (5, 10):
        hr, ndcg = _by_hand(trainer.model, paths, rows, k, exclude_seen)
        assert result[f"retrieval/hr@{k}"] == pytest.approx(hr, abs=1e-9)
        assert result[f"retrieval/ndcg@{k}"] == pytest.approx(ndcg, abs=1e-9)
    assert result["click/auc"] is None  # positives only: AUC does not apply
    assert result["click/logloss"] >= 0


def test_cli_prints_not_applicable_metrics_as_na(tmp_path, capsys) -> None:
    import yaml

    from recis.cli import main

    paths, _ = _interactions(tmp_path)
    config = tmp_path / "two_tower.yaml"
    config.write_text(yaml.safe_dump(_config(tmp_path, paths)))
    assert main(["train", str(config), "--launcher", "none"]) == 0
    out = capsys.readouterr().out
    assert "click/auc" in out and "n/a" in out and "retrieval/hr@10" in out
    assert "nan" not in out.lower().replace("n/a", "")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    evals = [r for r in records if r.get("split") == "eval"]
    assert evals and evals[-1]["click/auc"] is None and 0 <= evals[-1]["retrieval/hr@10"] <= 1


def test_eval_batches_rank_the_same_rows_as_the_task_metrics(tmp_path) -> None:
    """With ``eval_batches`` the corpus ranking reads the data a second time: it must score
    the same first batches as the task metrics, not the next ones."""
    from recis.config import build_run_config
    from recis.io import Reader
    from recis.train import evaluation, runner

    paths, _ = _interactions(tmp_path)
    cfg = build_run_config(_config(tmp_path, paths))
    trainer, _ = runner.build(cfg)
    for batch in trainer.train_data:
        trainer.train_step(batch)
    schema = cfg.data.schema_
    reader = Reader(paths["valid"], schema, 4, prefetch=0)
    first = list(Reader(paths["valid"], schema, 4, prefetch=0))[:2]
    assert len(first) == 2
    model, tasks, device = trainer.model, trainer.tasks, trainer.device
    capped = evaluation.evaluate(model, reader, tasks, device, max_batches=2)
    whole = evaluation.evaluate(model, first, tasks, device)
    assert capped.keys() == whole.keys() and "retrieval/hr@10" in whole
    for key, value in whole.items():
        assert capped[key] == (value if value is None else pytest.approx(value, abs=1e-12))
