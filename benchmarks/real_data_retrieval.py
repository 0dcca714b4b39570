"""Two-tower retrieval vs item-kNN on MovieLens latest-small (README protocol 1).

    .venv/bin/python benchmarks/real_data_retrieval.py [--data ../shared/data] [--work runs/bench_retrieval]

Protocol (``../shared/data/ml_latest_small/README.md``): each user's last interaction by
(timestamp, movieId) is the test item; rank every movie of the training interactions, the
user's own excluded; HR@10 and NDCG@10 over the 610 users, ties as an exact expectation.

- item-kNN: cosine between item columns of the binary user x item matrix, all neighbours,
  computed here with numpy/scipy (a port of the README's ``baselines.py``).
- two-tower: ``examples/recipes/movielens_retrieval`` as shipped (prepare, then
  ``recis train`` with early stopping on the second-to-last item, then one evaluation on
  the last item). No per-run tuning.

The last line printed is one JSON object: ``retrieval_knn_hr10``, ``retrieval_knn_ndcg10``,
``two_tower_hr10``, ``two_tower_ndcg10`` (test), ``two_tower_valid_hr10`` /
``two_tower_valid_ndcg10`` (the restored best epoch on validation), ``two_tower_best_epoch``,
``history`` (validation figures per epoch) and ``retrieval_seconds``; or ``{"skipped": reason}``
when the data is absent.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "examples" / "recipes" / "movielens_retrieval"
K = 10


def knn_baseline(ratings: Path, work_dir: Path) -> dict[str, float]:
    """Item-kNN HR@10 / NDCG@10 on the leave-last-out split (as ``baselines.py``)."""
    from recis import metrics
    from recis.io.split import read_input, split_table

    table = read_input(ratings, columns=["userId", "movieId", "timestamp"])
    parts = split_table(table, "leave-last-out", user="userId", time="timestamp", item="movieId")
    train, test = (
        {c: parts[p].column(c).to_numpy() for c in ("userId", "movieId")} for p in ("train", "test")
    )
    users = np.unique(table.column("userId").to_numpy())
    items = np.unique(train["movieId"])
    rows = np.searchsorted(users, train["userId"])
    cols = np.searchsorted(items, train["movieId"])
    x = sp.csr_matrix(
        (np.ones(len(rows)), (rows, cols)), shape=(len(users), len(items)), dtype=np.float64
    )
    x.data[:] = 1.0
    norms = np.sqrt(np.asarray(x.multiply(x).sum(0)).ravel()) + 1e-12
    xn = x.multiply(1.0 / norms).tocsr()
    # X @ S with S = Xn^T Xn minus its diagonal, without the items x items matrix
    scores = np.asarray((x @ xn.T).toarray() @ xn.toarray())
    scores -= x.toarray() * np.asarray(xn.multiply(xn).sum(0)).ravel()[None, :]
    target = dict(zip(test["userId"].tolist(), test["movieId"].tolist()))
    relevant, seen = [], []
    for u in range(len(users)):
        m = target.get(int(users[u]))
        col = int(np.searchsorted(items, m)) if m is not None else -1
        relevant.append(np.array([col if 0 <= col < len(items) and items[col] == m else -1]))
        seen.append(x.indices[x.indptr[u] : x.indptr[u + 1]])
    got = metrics.ranking_metrics(scores, relevant, seen, ks=(K,))
    return {"hr10": float(got[f"hr@{K}"].mean()), "ndcg10": float(got[f"ndcg@{K}"].mean())}


def _prepare_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "movielens_retrieval_prepare", RECIPE / "prepare.py"
    )
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _history(run_dir: Path) -> list[dict[str, Any]]:
    """Validation HR@10 / NDCG@10 of every epoch's evaluation."""
    from recis.train.runlog import read_records

    out = []
    for r in read_records(run_dir):
        if r.get("split") == "eval" and "retrieval/hr@10" in r:
            out.append(
                {
                    "step": r["step"],
                    "epoch": r.get("epoch"),
                    "hr10": r["retrieval/hr@10"],
                    "ndcg10": r["retrieval/ndcg@10"],
                }
            )
    return out


def two_tower(data_dir: Path, work_dir: Path) -> dict[str, Any]:
    """Prepare, train with the shipped config (early stopping on validation), test once."""
    from recis.config import load_config
    from recis.distributed import run as runner  # the one runner (1 or N processes)

    ml = data_dir / "ml_latest_small"
    prepared = work_dir / "data"
    _prepare_module().prepare(ml / "ratings.parquet", prepared, items=ml / "movies.parquet")
    run_dir = work_dir / "two_tower"
    for old in (run_dir, work_dir / "test"):  # a fresh run, not a resume of an old one
        shutil.rmtree(old, ignore_errors=True)
    common = [
        f"data.train={prepared / 'train.parquet'}",
        "train.progress=false",
        "train.tensorboard=false",
    ]
    valid = [
        f"data.eval={prepared / 'valid.parquet'}",
        f"model.retrieval_eval.seen={prepared / 'train.parquet'}",
    ]
    cfg = load_config(RECIPE / "two_tower.yaml", [*common, *valid, f"run_dir={run_dir}"])
    fit = runner.train(cfg)
    history = _history(run_dir)  # before the test evaluation, which logs elsewhere
    test = [
        f"data.eval={prepared / 'test.parquet'}",
        f"model.retrieval_eval.seen=[{prepared / 'train.parquet'},{prepared / 'valid.parquet'}]",
    ]
    cfg = load_config(RECIPE / "two_tower.yaml", [*common, *test, f"run_dir={work_dir / 'test'}"])
    result = runner.evaluate(cfg, run_dir / "checkpoints" / "final")
    return {
        "two_tower_hr10": result["retrieval/hr@10"],
        "two_tower_ndcg10": result["retrieval/ndcg@10"],
        "two_tower_valid_hr10": fit["retrieval/hr@10"],
        "two_tower_valid_ndcg10": fit["retrieval/ndcg@10"],
        "two_tower_best_epoch": fit.get("best_epoch"),
        "history": history,
    }


def run(data_dir: Path, work_dir: Path) -> dict[str, Any]:
    """The benchmark's figures (see the module docstring); ``{"skipped": ...}`` without data."""
    ratings = Path(data_dir) / "ml_latest_small" / "ratings.parquet"
    if not ratings.is_file():
        return {"skipped": f"no {ratings} (the shared data sets are absent)"}
    t0 = time.perf_counter()
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    knn = knn_baseline(ratings, work_dir)
    out: dict[str, Any] = {
        "retrieval_knn_hr10": knn["hr10"],
        "retrieval_knn_ndcg10": knn["ndcg10"],
    }
    out.update(two_tower(Path(data_dir), work_dir))
    out["two_tower_over_knn_hr10"] = out["two_tower_hr10"] / out["retrieval_knn_hr10"]
    out["retrieval_seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_retrieval")
    a = p.parse_args()
    print(json.dumps(run(a.data, a.work)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
