"""CTR on real data: DLRM, DeepFM and HHFT recipes vs logistic regression on MovieLens.

``ml_latest_small`` protocol 2 (its README): label ``rating >= 4``, ratings sorted by
(timestamp, userId, movieId), first 80% train, last 20% test, ROC-AUC and log-loss.

* ``ctr_lr_auc``: the README's baseline, computed here with scikit-learn (one-hot userId +
  movieId, multi-hot genres, C=0.1, trained on the whole 80%).
* each model: its shipped config ``examples/recipes/movielens_ctr/<model>.yaml`` as is (first
  try), trained on the train part minus its last 10% by time, evaluated on that 10%
  (``valid``) after every epoch, stopped early on valid AUC, the best epoch's weights
  restored; the restored model is then evaluated once on the test part.

Usage: ``python benchmarks/real_data_ctr.py [--work DIR] [--seeds N]``. The last line printed is one
JSON object: ``ctr_lr_auc``, ``ctr_lr_same_features_auc`` (the same LR on the recipes'
inputs, see :func:`lr_same_features`), ``ctr_lr_same_rows_auc`` and
``ctr_lr_same_rows_valid_auc`` (that LR fitted on the networks' rows only, train minus
valid: test and valid AUC), ``<model>_auc`` (test), ``<model>_logloss``,
``<model>_best_epoch``, ``<model>_valid_auc`` (best epoch), ``<model>_restored_auc`` (valid
AUC of the restored weights), ``<model>_restored_ok``, ``<model>_seconds``, ``history``
(valid AUC per epoch per model), with ``--seeds N`` also ``<model>_auc_seeds`` and
``<model>_auc_median`` (test AUC of seeds 0 .. N-1), or ``{"skipped": reason}`` without the
shared data.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from collections.abc import Sized
from pathlib import Path
from typing import Any

import numpy as np

from recis.train.callbacks import Callback

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
RECIPE = ROOT / "examples" / "recipes" / "movielens_ctr"
MODELS = ("dlrm", "deepfm", "hhft")


def lr_baseline(src: Path) -> dict[str, float]:
    """The README's logistic regression (one-hot user + movie, multi-hot genres, C=0.1)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss, roc_auc_score

    r = pq.read_table(src / "ratings.parquet")
    m = pq.read_table(src / "movies.parquet")
    user, movie = r["userId"].to_numpy(), r["movieId"].to_numpy()
    order = np.lexsort((movie, user, r["timestamp"].to_numpy()))
    user, movie = user[order], movie[order]
    y = (r["rating"].to_numpy()[order] >= 4.0).astype(int)
    n, cut = len(y), int(0.8 * len(y))
    movie_ids = np.sort(m["movieId"].to_numpy())
    users = np.unique(user)
    u_col = np.searchsorted(users, user)
    m_col = np.searchsorted(movie_ids, movie)
    genre_lists = pc.split_pattern(m["genres"].combine_chunks(), "|")
    names = sorted(set(pc.list_flatten(genre_lists).to_pylist()))
    g_of_row = np.searchsorted(movie_ids, m["movieId"].to_numpy())
    per_movie: list[list[int]] = [[] for _ in movie_ids]
    for i, gs in zip(g_of_row, genre_lists.to_pylist()):
        per_movie[i] = [names.index(g) for g in gs]
    g_rows = [(i, g) for i, mc in enumerate(m_col) for g in per_movie[mc]]
    gi, gj = (np.array(c) for c in zip(*g_rows))
    ones = np.ones(n)
    x = sp.hstack(
        [
            sp.csr_matrix((ones, (np.arange(n), u_col)), shape=(n, len(users))),
            sp.csr_matrix((ones, (np.arange(n), m_col)), shape=(n, len(movie_ids))),
            sp.csr_matrix((np.ones(len(gi)), (gi, gj)), shape=(n, len(names))),
        ]
    ).tocsr()
    model = LogisticRegression(C=0.1, max_iter=2000).fit(x[:cut], y[:cut])
    pred = model.predict_proba(x[cut:])[:, 1]
    return {"auc": float(roc_auc_score(y[cut:], pred)), "logloss": float(log_loss(y[cut:], pred))}


def lr_same_features(prepared: Path, with_valid: bool = True) -> dict[str, float]:
    """Test AUC of a logistic regression (C=0.1) on the recipes' own inputs: the causal
    numeric columns (standardized, missing -> 0) + one-hot movie + multi-hot genres. How much
    of the models' lead over ``ctr_lr_auc`` the features give. Trained on train + valid
    (``with_valid``), or on train only, the rows the networks learn from (then ``valid_auc``
    is its AUC on valid, comparable with the networks' valid AUC)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    sys.path.insert(0, str(RECIPE))
    from prepare import DENSE

    parts = [pq.read_table(prepared / f"{s}.parquet") for s in ("train", "valid", "test")]
    table = pa.concat_tables(parts)
    n, cut = table.num_rows, parts[0].num_rows + parts[1].num_rows
    fit_rows = cut if with_valid else parts[0].num_rows
    dense = np.stack(
        [np.nan_to_num(table[c].to_numpy(zero_copy_only=False).astype(float)) for c in DENSE], 1
    )
    dense = (dense - dense[:fit_rows].mean(0)) / (dense[:fit_rows].std(0) + 1e-9)
    movies, m_col = np.unique(table["movie_id"].to_numpy(), return_inverse=True)
    genres = table["genres"].combine_chunks()
    names, g_col = np.unique(
        pc.list_flatten(genres).to_numpy(zero_copy_only=False), return_inverse=True
    )
    g_row = np.repeat(np.arange(n), pc.list_value_length(genres).fill_null(0).to_numpy())
    x = sp.hstack(
        [
            sp.csr_matrix(dense),
            sp.csr_matrix((np.ones(n), (np.arange(n), m_col)), shape=(n, len(movies))),
            sp.csr_matrix((np.ones(len(g_row)), (g_row, g_col)), shape=(n, len(names))),
        ]
    ).tocsr()
    y = table["like"].to_numpy()
    model = LogisticRegression(C=0.1, max_iter=2000).fit(x[:fit_rows], y[:fit_rows])
    pred = model.predict_proba(x)[:, 1]
    out = {"auc": float(roc_auc_score(y[cut:], pred[cut:]))}
    if not with_valid:
        out["valid_auc"] = float(roc_auc_score(y[fit_rows:cut], pred[fit_rows:cut]))
    return out


class _History(Callback):
    """Valid AUC of every evaluation, and a copy of the best evaluation's weights (used only
    when the trainer did not restore them itself)."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.history: list[float] = []
        self.best: float | None = None
        self.best_epoch = 0
        self.state: dict[str, Any] | None = None

    def on_eval(self, trainer: Any, result: dict[str, float | None]) -> None:
        value = _value(result, self.metric)
        self.history.append(value)
        if self.best is None or value > self.best:
            self.best, self.best_epoch = value, len(self.history)
            self.state = copy.deepcopy(trainer.model.state_dict())


def _value(result: dict[str, float | None], metric: str) -> float:
    """``result[metric]``; a metric that does not apply (None, one class in valid) stops the
    benchmark: early stopping cannot watch it."""
    value = result.get(metric)
    if value is None:
        raise RuntimeError(f"{metric}: not applicable on the valid file (one class?)")
    return float(value)


def train_recipe(
    name: str, data_dir: Path, work_dir: Path, overrides: list[str] | None = None
) -> dict[str, Any]:
    """Train ``<name>.yaml`` on ``data_dir``'s train/valid files; metrics of the restored
    best epoch on valid and test. ``overrides`` (``a.b=value``) are for trying variants on
    valid; the benchmark itself runs the configs as shipped (plus ``threads=1``)."""
    from recis.config import load_config
    from recis.io import reader_from_config
    from recis.train import runner

    cfg = load_config(
        RECIPE / f"{name}.yaml",
        [
            f"data.train={data_dir / 'train.parquet'}",
            f"data.eval={data_dir / 'valid.parquet'}",
            f"run_dir={work_dir / name}",
            # one intra-op thread: these models are small, and on a loaded machine torch's
            # thread pool spins (measured 20x slower steps with 2 threads under load)
            "threads=1",
            "train.progress=false",
            "train.tensorboard=false",
            *(overrides or []),
        ],
    )
    assert cfg.train.early_stopping is not None
    metric = cfg.train.early_stopping.metric
    t0 = time.perf_counter()
    trainer, _ = runner.build(cfg)
    keeper = _History(metric)
    trainer.callbacks.insert(0, keeper)
    if not cfg.train.eval_each_epoch:  # the recipes set it; variants may not
        assert isinstance(trainer.train_data, Sized)  # the readers know their batch count
        trainer.config.eval_every = len(trainer.train_data)
    fitted = trainer.fit()
    seconds = time.perf_counter() - t0
    trainer.callbacks.remove(keeper)
    assert keeper.best is not None and keeper.state is not None
    # with restore_best the trainer loaded checkpoints/best and evaluated it (split "best")
    restored = _value(trainer.evaluate(split="best"), metric)
    restored_by = "trainer"
    if abs(restored - keeper.best) > 1e-6:  # restore_best off in a variant: restore here
        trainer.model.load_state_dict(keeper.state)
        restored, restored_by = _value(trainer.evaluate(split="best"), metric), "benchmark"
    test: dict[str, float | None] = {}
    if (data_dir / "test.parquet").is_file():  # absent while trying variants on valid
        test_reader = reader_from_config(cfg.data, str(data_dir / "test.parquet"), train=False)
        test = trainer.evaluate(test_reader, split="test")
    task = metric.split("/")[0]
    return {
        "auc": test.get(f"{task}/auc"),
        "logloss": test.get(f"{task}/logloss"),
        "best_epoch": keeper.best_epoch,
        "trainer_best_epoch": fitted.get("best_epoch"),
        "trainer_restored_auc": fitted.get(metric),
        "epochs": len(keeper.history),
        "valid_auc": keeper.best,
        "restored_auc": restored,
        "restored_ok": bool(abs(restored - keeper.best) < 1e-6),
        "restored_by": restored_by,
        "history": keeper.history,
        "seconds": round(seconds, 1),
    }


def plot(history: dict[str, list[float]], path: Path) -> None:
    """Valid AUC per epoch per model (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for name, values in history.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", label=name)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("valid AUC (last 10% of the train part)")
    ax.set_title("MovieLens latest-small, like = rating >= 4")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def prepare_log(src: Path, out: Path) -> Path:
    """The recipe's ``prepare.py`` run on ``src`` (``ml_latest_small``): its train, valid and
    test files in ``out``, which is returned."""
    sys.path.insert(0, str(RECIPE))
    from prepare import prepare

    prepare(src, out)
    return out


def run(data_dir: Path, work_dir: Path, seeds: int = 1) -> dict[str, Any]:
    """All three recipes and the LR baseline; ``data_dir`` is ``shared/data`` (the folder
    holding ``ml_latest_small``). ``seeds`` > 1 also trains seeds 1 .. seeds-1 of each recipe
    and adds ``<model>_auc_seeds`` (test AUC per seed, seed 0 first) and ``<model>_auc_median``:
    one run's margin between two models is inside the seed spread."""
    src = Path(data_dir) / "ml_latest_small"
    if not (src / "ratings.parquet").is_file():
        return {"skipped": f"no {src}/ratings.parquet"}
    work_dir = Path(work_dir)
    prepared = prepare_log(src, work_dir / "movielens_ctr")
    t0 = time.perf_counter()
    lr = lr_baseline(src)
    out: dict[str, Any] = {
        "ctr_lr_auc": lr["auc"],
        "ctr_lr_logloss": lr["logloss"],
        "ctr_lr_seconds": round(time.perf_counter() - t0, 1),
    }
    out["ctr_lr_same_features_auc"] = lr_same_features(prepared)["auc"]
    same = lr_same_features(prepared, with_valid=False)
    out["ctr_lr_same_rows_auc"] = same["auc"]
    out["ctr_lr_same_rows_valid_auc"] = same["valid_auc"]
    history: dict[str, list[float]] = {}
    for name in MODELS:
        res = train_recipe(name, prepared, work_dir / "runs")
        history[name] = res.pop("history")
        out.update({f"{name}_{k}": v for k, v in res.items()})
    out["history"] = history
    for name in MODELS if seeds > 1 else []:  # test AUC of seeds 1 .. seeds-1 beside seed 0's
        aucs = [out[f"{name}_auc"]]
        for seed in range(1, seeds):
            res = train_recipe(name, prepared, work_dir / f"runs_s{seed}", [f"seed={seed}"])
            aucs.append(res["auc"])
        out[f"{name}_auc_seeds"] = aucs
        out[f"{name}_auc_median"] = float(np.median(aucs))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: temp)")
    parser.add_argument("--data", type=Path, default=DATA, help="the shared/data folder")
    parser.add_argument("--plot", type=Path, default=None, help="write the valid AUC curves here")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per recipe (medians)")
    args = parser.parse_args()
    if args.work is not None:
        result = run(args.data, args.work, args.seeds)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = run(args.data, Path(tmp), args.seeds)
    if args.plot is not None and "history" in result:
        plot(result["history"], args.plot)
    for key, value in result.items():
        if key != "history":
            print(f"{key:24s} {value}", flush=True)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
