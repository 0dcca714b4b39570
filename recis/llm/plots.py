"""Curves of a relevance-LLM run: ``run_dir/plots/relevance_llm.png`` from its metrics.jsonl.

Three panels: the training loss of each stage (SFT, DPO, and the policy loss of the GRPO
stages), the mean reward of each GRPO-family stage (the reward curves), and the eval AUC of
the serving score after each stage (with and without the context chunk where there is one).
Steps are numbered across stages as the run log numbers them.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

from recis.train.runlog import read_records


def _by_stage(records: list[dict[str, Any]], key: str) -> dict[str, tuple[list, list]]:
    out: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    for r in records:
        if r.get("split") == "train" and "part" not in r and isinstance(r.get(key), int | float):
            if "train_runtime" in r:  # trl's end-of-training summary: an average, not a point
                continue
            out[r["stage"]][0].append(r["step"])
            out[r["stage"]][1].append(r[key])
    return out


def plot_llm_run(run_dir: str | Path) -> Path | None:
    """Write the PNG (None, with a warning, when matplotlib is not installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed: no plots (recis[plots])", stacklevel=2)
        return None
    records = read_records(run_dir)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, key, title in ((axes[0], "loss", "training loss"), (axes[1], "reward", "mean reward")):
        for stage, (steps, values) in _by_stage(records, key).items():
            ax.plot(steps, values, marker=".", label=stage)
        ax.set(title=title, xlabel="step")
        if ax.lines:
            ax.legend()
    evals = [r for r in records if r.get("split") == "eval" and isinstance(r.get("auc"), float)]
    names = [r["stage"] for r in evals]
    axes[2].bar(
        names,
        [r["auc"] for r in evals],
        label="with context" if any("no_context_auc" in r for r in evals) else "auc",
    )
    bare = [(i, r["no_context_auc"]) for i, r in enumerate(evals) if r.get("no_context_auc")]
    if bare:
        axes[2].scatter(
            [i for i, _ in bare], [v for _, v in bare], color="k", zorder=3, label="without context"
        )
    axes[2].set(title="eval AUC (serving score)", ylim=(0.4, 1.0))
    axes[2].legend()
    out = Path(run_dir) / "plots" / "relevance_llm.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
