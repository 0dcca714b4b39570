"""Real-data benchmark: every model family on the public datasets in ``../shared/data``,
trained with the shipped recipe configs (first try, no per-run tuning), next to the
classical baselines of the datasets' READMEs computed in the same run.

* CTR (``ml_latest_small`` protocol 2, temporal 80/20, label ``rating >= 4``): logistic
  regression vs DLRM, DeepFM, HHFT (``benchmarks/real_data_ctr.py``).
* Retrieval (``ml_latest_small`` protocol 1, leave-last-out, full corpus, seen items
  excluded): item-kNN vs the two-tower model (``benchmarks/real_data_retrieval.py``).
* Relevance (``qbqtc``, query-hash 80/20, ``label == 2`` and ``label >= 1``): BM25 and
  logistic regression on lexical overlap features vs DeepBoW from raw text and the dense
  relevance tower (``benchmarks/real_data_relevance.py``).

Usage: ``python benchmarks/real_data.py [--only ctr,retrieval,relevance] [--out DIR]
[--plot PNG] [--ctr-seeds N]``. Writes a plot of eval AUC per epoch (CTR and relevance; the curves of the
families a run leaves out come from the JSON beside the plot, written by earlier runs) and prints one
JSON object as the last line, with the keys ``ctr_lr_auc, dlrm_auc, deepfm_auc, hhft_auc,
retrieval_knn_hr10, two_tower_hr10, relevance_bm25_auc, relevance_lr_auc, deepbow_auc,
dense_relevance_auc`` (relevance on ``label == 2``; the ``label >= 1`` figures carry a
``_ge1`` suffix) plus the ratios and the goals of issue 15 as booleans (with
``--ctr-seeds N`` the CTR goals also on the medians over seeds, ``_median`` keys).
Without ``../shared/data`` it prints ``{"skipped": ...}`` and exits 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
FAMILIES = ("ctr", "retrieval", "relevance")


def _family(name: str) -> Any:
    """The ``benchmarks/real_data_<name>.py`` module (benchmarks/ is not a package)."""
    path = ROOT / "benchmarks" / f"real_data_{name}.py"
    spec = importlib.util.spec_from_file_location(f"real_data_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def goals(out: dict[str, Any]) -> dict[str, bool]:
    """Issue 15's goals, each true or false (absent when its figures are absent)."""
    checks = {
        "goal_dlrm_ge_lr_plus_0.01": ("dlrm_auc", "ctr_lr_auc", 0.01),
        "goal_hhft_ge_dlrm_plus_0.003": ("hhft_auc", "dlrm_auc", 0.003),
        "goal_deepfm_ge_lr": ("deepfm_auc", "ctr_lr_auc", 0.0),
        "goal_deepbow_ge_lr_plus_0.01": ("deepbow_auc", "relevance_lr_auc", 0.01),
        "goal_deepbow_ge1_ge_lr_plus_0.01": ("deepbow_auc_ge1", "relevance_lr_auc_ge1", 0.01),
        "goal_deepbow_ge_dense": ("deepbow_auc", "dense_relevance_auc", 0.0),
        # with --ctr-seeds N: the CTR goals on the medians over seeds as well
        "goal_dlrm_ge_lr_plus_0.01_median": ("dlrm_auc_median", "ctr_lr_auc", 0.01),
        "goal_hhft_ge_dlrm_plus_0.003_median": ("hhft_auc_median", "dlrm_auc_median", 0.003),
        "goal_deepfm_ge_lr_median": ("deepfm_auc_median", "ctr_lr_auc", 0.0),
    }
    result = {}
    for name, (a, b, margin) in checks.items():
        if isinstance(out.get(a), float) and isinstance(out.get(b), float):
            result[name] = out[a] >= out[b] + margin
    if isinstance(out.get("two_tower_hr10"), float) and out.get("retrieval_knn_hr10"):
        ratio = out["two_tower_hr10"] / out["retrieval_knn_hr10"]
        out["two_tower_vs_knn"] = ratio
        result["goal_two_tower_ge_1.5x_knn"] = ratio >= 1.5
    return result


def merged_history(history: dict[str, list[float]], path: Path) -> dict[str, list[float]]:
    """This run's curves plus those of the families it did not run, kept in ``path`` (JSON
    beside the plot) by earlier runs: a run with ``--only ctr`` keeps the relevance curves
    in the plot. Writes the merged curves back to ``path``."""
    ran = {name.split("/")[0] for name in history}
    kept = json.loads(path.read_text()) if path.is_file() else {}
    merged = {k: v for k, v in kept.items() if k.split("/")[0] not in ran}
    merged.update(history)
    merged = dict(sorted(merged.items()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(merged, indent=1) + "\n")
    return merged


def plot(history: dict[str, list[float]], path: Path) -> None:
    """Eval AUC per epoch, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in history.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", label=name)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("eval AUC")
    ax.set_title("real data: eval AUC per epoch (shipped recipes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(FAMILIES), help="comma-separated families")
    p.add_argument("--out", default=None, help="work directory (default: a temporary one)")
    p.add_argument("--plot", default=str(ROOT / "docs" / "img" / "real_data_auc.png"))
    p.add_argument("--ctr-seeds", type=int, default=1, help="CTR seeds per recipe (medians)")
    args = p.parse_args()
    if not DATA.is_dir():
        print(json.dumps({"skipped": f"no shared data at {DATA}"}))
        return
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="recis-real-"))
    out: dict[str, Any] = {}
    history: dict[str, list[float]] = {}
    for name in args.only.split(","):
        if name not in FAMILIES:
            sys.exit(f"--only: unknown family {name!r} (choose from {', '.join(FAMILIES)})")
        t0 = time.perf_counter()
        extra = {"seeds": args.ctr_seeds} if name == "ctr" else {}
        result = _family(name).run(DATA, work / name, **extra)
        per_model = result.pop("history", {})
        if isinstance(per_model, dict):  # {model: [eval AUC per epoch]}
            for model, values in per_model.items():
                history[f"{name}/{model}"] = values
        out.update(result)
        out[f"{name}_seconds"] = round(time.perf_counter() - t0, 1)
        print(f"{name}: {json.dumps(result)}", flush=True)
    out.update(goals(out))
    if history and args.plot:
        plot(merged_history(history, Path(args.plot).with_suffix(".json")), Path(args.plot))
        out["plot"] = args.plot
    print(json.dumps(out))


if __name__ == "__main__":
    main()
