"""Relevance on real data: DeepBoW and the dense relevance tower vs BM25 and LR on qbqtc.

``qbqtc`` protocol (its README): both source files pooled, split by query hash 80/20
(``md5(query)[:8] % 100 < 80`` -> train), targets ``label == 2`` (primary) and
``label >= 1`` (``_ge1`` keys), ROC-AUC over all test pairs.

* ``relevance_bm25_auc``, ``relevance_tfidf_auc``, ``relevance_lr_auc``: the README's
  baselines computed here with scikit-learn exactly as its ``baselines.py`` (char 1-2-grams,
  statistics from the train part; LR on the 9 dense overlap features, C=1, trained on the
  whole 80%); ``relevance_lr_title_auc`` (not in the README): the same LR with the title's
  TF-IDF vector added, a query-independent title prior like the recipes' ``product_prior``;
* ``deepbow_auc``, ``dense_relevance_auc``: the shipped configs
  ``examples/recipes/qbqtc_relevance/{deepbow,dense_relevance}.yaml`` as they are (first try),
  trained on the train part minus 15% of its queries (``valid``), evaluated on ``valid``
  after every epoch, stopped early on valid AUC (label == 2) with the best epoch restored
  (``<model>_restored_ok``: the restored weights give the best epoch's valid AUC again),
  then evaluated once on the test part;
* ``init_auc`` (``init_auc_ge1``): the run config ``recis init`` writes for the prepared
  train file from its raw columns (``query``, ``title``; one config per target, the other
  target, ``label``, ``id`` and the precomputed ``lexical`` column ignored), trained as
  written: text as bags of hashed terms on one table plus the pair's lexical match feature
  (statistics fitted on train), DLRM with the MovieLens recipe's settings, early stopping
  on valid; ``init_best_epoch``; ``init_deepbow_auc`` (``_ge1``): ``recis init --model
  deepbow`` the same way, one config of both targets (the texts as DeepBoW's query and
  product, their lexical match);
* ``history``: valid AUC per epoch, ``{model: [...], model_ge1: [...]}``;
* ``explanations``: DeepBoW's top shared terms (and top product-prior terms of the title)
  for a few test pairs with label 2, and
  ``explain_terms_in_text``: the share of those terms that are n-grams of the query or title.

Usage: ``python benchmarks/real_data_relevance.py [--work DIR] [--data DIR]``. The last line
printed is one JSON object, or ``{"skipped": reason}`` without the shared data.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
RECIPE = ROOT / "examples" / "recipes" / "qbqtc_relevance"
# init, init_deepbow: the configs `recis init` writes (--model dlrm, deepbow)
MODELS = ("deepbow", "dense_relevance", "init", "init_deepbow")
TARGETS = {"very_relevant": "", "relevant": "_ge1"}  # task -> key suffix


def baselines(src: Path) -> dict[str, float]:
    """The README's TF-IDF cosine, BM25 and LR-on-9-overlap-features AUCs (its baselines.py,
    with pyarrow in place of pandas)."""
    import pyarrow.parquet as pq
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    t = pq.read_table(src / "pairs.parquet")
    query = np.array(t.column("query").to_pylist(), dtype=object)
    title = np.array(t.column("title").to_pylist(), dtype=object)
    label = t.column("label").to_numpy()
    bucket = np.array([int(hashlib.md5(q.encode()).hexdigest()[:8], 16) % 100 for q in query])
    tr, te = bucket < 80, bucket >= 80
    grams = dict(analyzer="char", ngram_range=(1, 2), lowercase=True)
    fit_text = list(query[tr]) + list(title[tr])
    tfidf = TfidfVectorizer(sublinear_tf=True, **grams).fit(fit_text)
    counts = CountVectorizer(**grams).fit(fit_text)
    t_train = counts.transform(title[tr])
    df = np.bincount(t_train.indices, minlength=t_train.shape[1])
    idf = np.log(1 + (t_train.shape[0] - df + 0.5) / (df + 0.5))
    avgdl = float(t_train.sum()) / t_train.shape[0]

    def bm25(q: np.ndarray, d: np.ndarray, k1: float = 1.2, b: float = 0.75) -> np.ndarray:
        tm = counts.transform(d).tocsr().astype(np.float64)
        qm = counts.transform(q).tocsr()
        qm.data[:] = 1.0
        dl = np.asarray(tm.sum(1)).ravel()
        rows = np.repeat(np.arange(tm.shape[0]), np.diff(tm.indptr))
        tf = tm.data
        tm.data = idf[tm.indices] * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl[rows] / avgdl))
        return np.asarray(qm.multiply(tm).sum(1)).ravel()

    def overlap(qs: np.ndarray, ds: np.ndarray) -> np.ndarray:
        rows = []
        for q, d in zip(qs, ds):
            q, d = q.lower(), d.lower()
            qu, du = set(q), set(d)
            qb = {q[i : i + 2] for i in range(len(q) - 1)}
            db = {d[i : i + 2] for i in range(len(d) - 1)}
            rows.append(
                [
                    len(qu & du) / max(len(qu), 1),
                    len(qb & db) / max(len(qb), 1),
                    len(qu & du) / max(len(qu | du), 1),
                    float(q in d),
                    float(d in q),
                    np.log1p(len(q)),
                    np.log1p(len(d)),
                ]
            )
        return np.asarray(rows)

    def features(part: np.ndarray) -> np.ndarray:
        qv, dv = tfidf.transform(query[part]), tfidf.transform(title[part])
        cos = np.asarray(qv.multiply(dv).sum(1)).ravel()
        return np.column_stack(
            [cos, bm25(query[part], title[part]), overlap(query[part], title[part])]
        )

    x_tr, x_te = features(tr), features(te)
    scaler = StandardScaler().fit(x_tr)
    # not in the README: the 9 features plus the title's own TF-IDF vector (a title prior)
    t_tr = sp.hstack([tfidf.transform(title[tr]), sp.csr_matrix(scaler.transform(x_tr))]).tocsr()
    t_te = sp.hstack([tfidf.transform(title[te]), sp.csr_matrix(scaler.transform(x_te))]).tocsr()
    out: dict[str, float] = {}
    for suffix, y in (("", label == 2), ("_ge1", label >= 1)):
        lr = LogisticRegression(C=1.0, max_iter=5000).fit(scaler.transform(x_tr), y[tr])
        out[f"relevance_tfidf_auc{suffix}"] = float(roc_auc_score(y[te], x_te[:, 0]))
        out[f"relevance_bm25_auc{suffix}"] = float(roc_auc_score(y[te], x_te[:, 1]))
        out[f"relevance_lr_auc{suffix}"] = float(
            roc_auc_score(y[te], lr.decision_function(scaler.transform(x_te)))
        )
        lr_title = LogisticRegression(C=1.0, max_iter=5000).fit(t_tr, y[tr])
        out[f"relevance_lr_title_auc{suffix}"] = float(
            roc_auc_score(y[te], lr_title.decision_function(t_te))
        )
    return out


def train_recipe(
    name: str, data_dir: Path, work_dir: Path, overrides: list[str] | None = None
) -> tuple[dict[str, Any], Any]:
    """Train ``<name>.yaml`` on ``data_dir``'s train/valid files (early stopping and best-epoch
    restore as configured); metrics on test when ``data_dir/test.parquet`` exists.
    ``overrides`` (``a.b=value``) are for trying variants on valid; the benchmark runs the
    configs as shipped. Returns the metrics and the trainer (its model restored)."""
    from recis.config import load_config
    from recis.io import reader_from_config
    from recis.train import runner
    from recis.train.callbacks import Callback

    cfg = load_config(
        RECIPE / f"{name}.yaml",
        [
            f"data.train={data_dir / 'train.parquet'}",
            f"data.eval={data_dir / 'valid.parquet'}",
            f"run_dir={work_dir / name}",
            # the statistics prepare.py fitted on the same train rows (recis train would fit
            # the same ones into the recipe's path)
            f"data.schema.dense.0.lexical.stats={data_dir / 'lexical.safetensors'}",
            "train.progress=false",
            "train.tensorboard=false",
            *(overrides or []),
        ],
    )
    history: list[dict[str, float]] = []

    class History(Callback):
        def on_eval(self, trainer: Any, result: dict[str, float]) -> None:
            history.append({t: float(result[f"{t}/auc"]) for t in TARGETS})

    t0 = time.perf_counter()
    trainer, _ = runner.build(cfg)
    hook = History()
    trainer.callbacks.append(hook)
    fit = trainer.fit()
    seconds = time.perf_counter() - t0
    trainer.callbacks.remove(hook)
    out: dict[str, Any] = {
        "best_epoch": fit.get("best_epoch"),
        "valid_auc": max((h["very_relevant"] for h in history), default=None),
        "history": [h["very_relevant"] for h in history],
        "history_ge1": [h["relevant"] for h in history],
        "seconds": round(seconds, 1),
    }
    restored = float(trainer.evaluate()["very_relevant/auc"])  # valid, restored weights
    out["restored_ok"] = out["valid_auc"] is not None and abs(restored - out["valid_auc"]) < 1e-6
    test_path = data_dir / "test.parquet"
    if test_path.is_file():
        test = trainer.evaluate(reader_from_config(cfg.data, str(test_path), train=False))
        for task, suffix in TARGETS.items():
            out[f"auc{suffix}"] = float(test[f"{task}/auc"])
    return out, trainer


def init_first_try(
    data_dir: Path, work_dir: Path, threads: int | None, model: str = "dlrm"
) -> dict[str, Any]:
    """``recis init --model MODEL`` on ``data_dir/train.parquet``, trained as written (no
    edit), evaluated once on ``test.parquet`` with the restored best epoch: DLRM one config
    per target (``init_*``), DeepBoW one config of both targets (``init_deepbow_*``)."""
    from recis.config import load_config
    from recis.io import reader_from_config
    from recis.io.lexical import fit_lexical_stats
    from recis.recipe import init_config
    from recis.train import runner

    runs = [list(TARGETS)] if model == "deepbow" else [[t] for t in TARGETS]
    key = "init" if model == "dlrm" else f"init_{model}"
    out: dict[str, Any] = {}
    for tasks in runs:
        name = f"{key}_{'_'.join(tasks)}"
        init_config(
            str(data_dir / "train.parquet"),
            tasks,
            work_dir / f"{name}.yaml",
            eval_path=str(data_dir / "valid.parquet"),
            model=model,
            ignore=["id", "label", "lexical", *(t for t in TARGETS if t not in tasks)],
            run_dir=str(work_dir / name),
        )
        cfg = load_config(work_dir / f"{name}.yaml", [f"threads={threads}"] if threads else [])
        fit_lexical_stats(cfg.data, cfg.data.train)  # what `recis train` does first
        t0 = time.perf_counter()
        trainer, _ = runner.build(cfg)
        fit = trainer.fit()
        test = trainer.evaluate(
            reader_from_config(cfg.data, str(data_dir / "test.parquet"), train=False)
        )
        suffix = TARGETS[tasks[0]]
        for task in tasks:
            out[f"{key}_auc{TARGETS[task]}"] = float(test[f"{task}/auc"])
        out[f"{key}_best_epoch{suffix}"] = fit.get("best_epoch")
        out[f"{key}_seconds{suffix}"] = round(time.perf_counter() - t0, 1)
    return out


def explanations(model: Any, data_dir: Path, pairs: int = 5, top: int = 3) -> dict[str, Any]:
    """Top shared terms of the first ``pairs`` test pairs with label 2 (by contribution)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.read_table(data_dir / "test.parquet", columns=["query", "title", "label"])
    t = t.filter(pc.equal(t.column("label"), 2)).slice(0, pairs)
    rows, hits, total = [], 0, 0
    for q, d in zip(t.column("query").to_pylist(), t.column("title").to_pylist()):
        terms = [r["term"] for r in model.explain(q, d)[:top]]
        # a term joins CJK characters without a space and words with one
        found = [term in q or term in d or term.replace(" ", "") in q + d for term in terms]
        hits, total = hits + sum(found), total + len(found)
        prior = [r["term"] for r in model.explain_prior(d)[:top]]  # title terms, largest prior
        rows.append({"query": q, "title": d, "terms": terms, "prior_terms": prior})
    return {"explanations": rows, "explain_terms_in_text": hits / max(total, 1)}


def run(
    data_dir: Path,
    work_dir: Path,
    threads: int | None = None,
    models: tuple[str, ...] = MODELS,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """The recipes and the baselines; ``data_dir`` is ``shared/data`` (holding ``qbqtc``).
    ``threads``: torch threads of the training runs (1 on a shared machine: more threads than
    free cores slow torch's small ops down many times). ``overrides`` (``a.b=value``) change
    the shipped configs, for ablations only."""
    src = Path(data_dir) / "qbqtc"
    if not (src / "pairs.parquet").is_file():
        return {"skipped": f"no {src}/pairs.parquet"}
    # by path, under its own name: other recipes' prepare.py would shadow a plain import
    spec = importlib.util.spec_from_file_location("qbqtc_relevance_prepare", RECIPE / "prepare.py")
    assert spec is not None and spec.loader is not None
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    work_dir = Path(work_dir)
    prepared = work_dir / "qbqtc_relevance"
    recipe.prepare(src, prepared)
    t0 = time.perf_counter()
    out: dict[str, Any] = baselines(src)
    out["baselines_seconds"] = round(time.perf_counter() - t0, 1)
    history: dict[str, list[float]] = {}
    for name in models:
        if name.startswith("init"):  # init (DLRM) or init_deepbow
            model = name.removeprefix("init").removeprefix("_") or "dlrm"
            got = init_first_try(prepared, work_dir, threads, model)
            out.update({f"relevance_{k}": v for k, v in got.items()})
            continue
        extra = ([f"threads={threads}"] if threads else []) + list(overrides or [])
        res, trainer = train_recipe(name, prepared, work_dir / "runs", extra)
        history[name], history[f"{name}_ge1"] = res.pop("history"), res.pop("history_ge1")
        out.update({f"{name}_{k}": v for k, v in res.items()})
        if name == "deepbow":
            out.update(explanations(trainer.model, prepared))
    out["history"] = history
    return out


def plot(history: dict[str, list[float]], path: Path) -> None:
    """Valid AUC per epoch of each model and target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in history.items():
        style = "--" if name.endswith("_ge1") else "-"
        label = name.replace("_ge1", " (label >= 1)") if style == "--" else f"{name} (label == 2)"
        ax.plot(range(1, len(values) + 1), values, style, marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("valid AUC")
    ax.set_title("qbqtc: valid AUC per epoch (shipped recipes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: temp)")
    parser.add_argument("--data", type=Path, default=DATA, help="the shared/data folder")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--plot", type=Path, default=None, help="write valid AUC per epoch here")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated recipes")
    parser.add_argument(
        "--set", action="append", default=[], help="config override a.b=value (ablations only)"
    )
    args = parser.parse_args()
    models = tuple(args.models.split(","))
    if args.work is not None:
        result = run(args.data, args.work, args.threads, models, args.set)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = run(args.data, Path(tmp), args.threads, models, args.set)
    if args.plot is not None and "history" in result:
        plot(result["history"], args.plot)
    for key, value in result.items():
        if key not in ("history", "explanations"):
            print(f"{key:28s} {value}", flush=True)
    print(json.dumps(result, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
