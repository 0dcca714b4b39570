"""``recis plot RUN_DIR``: PNG curves of a run from its metrics.jsonl (matplotlib).

Writes into ``RUN_DIR/plots``: ``loss.png`` (objective and per-task training
losses), ``multipliers.png`` (priority objective: multipliers and constraint
slack) and ``eval_<task>.png`` (each eval metric of the task over steps).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from recis.errors import RecisError

from .runlog import read_records


def _series(records: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r.get("step", 0), r[key]) for r in records if isinstance(r.get(key), int | float)]
    if not pts:
        return np.empty(0), np.empty(0)
    s, v = zip(*pts)
    return np.asarray(s, dtype=float), np.asarray(v, dtype=float)


def _smooth(v: np.ndarray, beta: float = 0.95) -> np.ndarray:
    out = np.empty_like(v)
    acc = 0.0
    for i, x in enumerate(v):
        acc = beta * acc + (1 - beta) * x
        out[i] = acc / (1 - beta ** (i + 1))
    return out


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write the PNGs of ``run_dir`` and return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise RecisError(f"{run_dir}: no metrics.jsonl (not a run directory?)")
    records = read_records(run_dir)
    train = [r for r in records if r.get("split") == "train"]
    evals = [r for r in records if r.get("split") == "eval"]
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    written: list[Path] = []

    keys = sorted({k for r in train for k in r if k == "loss" or k.startswith("loss/")})
    if keys:
        fig, ax = plt.subplots(figsize=(7, 4))
        for k in keys:
            s, v = _series(train, k)
            ax.plot(s, _smooth(v), label=k)
        ax.set(xlabel="step", ylabel="training loss (EMA 0.95)", title=run_dir.name)
        ax.legend()
        ax.grid(alpha=0.3)
        written.append(_save(fig, out_dir / "loss.png"))

    lam = sorted({k for r in train for k in r if k.startswith("lambda/")})
    if lam:
        fig, axes = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
        for k in lam:
            task = k.split("/", 1)[1]
            axes[0].plot(*_series(train, k), label=f"lambda {task}")
            s, v = _series(train, f"slack/{task}")
            axes[1].plot(s, v, label=f"slack {task} (eps - loss)")
        axes[1].axhline(0.0, color="k", lw=0.8)
        axes[0].set(ylabel="multiplier")
        axes[1].set(xlabel="step", ylabel="constraint slack")
        for a in axes:
            a.legend()
            a.grid(alpha=0.3)
        written.append(_save(fig, out_dir / "multipliers.png"))

    tasks = sorted({k.split("/", 1)[0] for r in evals for k in r if "/" in k})
    for task in tasks:
        names = sorted({k.split("/", 1)[1] for r in evals for k in r if k.startswith(f"{task}/")})
        fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3), squeeze=False)
        for a, name in zip(axes[0], names):
            a.plot(*_series(evals, f"{task}/{name}"), marker="o", ms=3)
            a.set(title=f"{task} {name}", xlabel="step")
            a.grid(alpha=0.3)
        written.append(_save(fig, out_dir / f"eval_{task}.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
