"""Priority objective vs a 5-point grid of weighted sums, on the two-task synthetic data.

    .venv/bin/python benchmarks/multitask.py [--rows 200000] [--epochs 2] [--threads 1]

Runs examples/multitask_synthetic.yaml (DLRM with a one-unit shared layer,
click priority 0 with tolerance 5%, conversion priority 1) in one process:

1. click alone (the reference the tolerance is measured against),
2. the priority objective (one run, no weight to choose),
3. weighted sums ``w * L_click + (1 - w) * L_conversion`` for w in 0.1, 0.3, 0.5, 0.7, 0.9.

The grid's best point is what tuning would pick for the same goal: the highest
conversion AUC among points whose click eval logloss is within the tolerance of
click alone (if none is, the best click AUC). The last line is one JSON object:
priority_auc and grid_best_auc ({task: AUC}), grid_time_ratio (the grid's total
training wall time over the priority run's; grid_cpu_time_ratio the same in
CPU time), and the details.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from recis.config import TaskConfig, load_config
from recis.train import Callback, runner

ROOT = Path(__file__).resolve().parent.parent
GRID = (0.1, 0.3, 0.5, 0.7, 0.9)


class _Lambda(Callback):
    def __init__(self, out: list[float]) -> None:
        self.out = out

    def on_step_end(self, trainer: Any, record: dict[str, Any]) -> None:
        self.out.append(record["lambda/click"])


def plot(grid: dict[float, dict], prio: dict, single: dict, bound: float, path: Path) -> None:
    """Click vs conversion AUC of each grid point and the priority run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    xs = [g["conversion/auc"] for g in grid.values()]
    ys = [g["click/auc"] for g in grid.values()]
    ax.plot(xs, ys, "o", color="tab:gray", label="weighted sum grid (5 runs)")
    for w, x, y in zip(grid, xs, ys):
        ax.annotate(f"w_click={w}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.plot(
        prio["conversion/auc"],
        prio["click/auc"],
        "*",
        ms=14,
        color="tab:red",
        label="priority (1 run)",
    )
    ax.axhline(single["click/auc"], ls="--", color="tab:blue", lw=1, label="click alone")
    ax.set(xlabel="conversion AUC (priority 1)", ylabel="click AUC (priority 0)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(cfg: Any, tasks: list[TaskConfig], objective: str, name: str) -> dict[str, Any]:
    train = dataclasses.replace(cfg.train, tasks=tasks, objective=objective)
    cfg = dataclasses.replace(cfg, train=train, run_dir=str(Path(cfg.run_dir) / name))
    trainer, _ = runner.build(cfg)
    lam: list[float] = []
    if objective == "priority":
        trainer.callbacks.append(_Lambda(lam))
    t0, c0 = time.perf_counter(), time.process_time()
    result = trainer.fit()
    if result.get("stopped") == "sigterm":  # the trainer checkpointed and returned: stop here
        sys.exit(143)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = {k: v for k, v in result.items() if k.endswith(("/auc", "/logloss"))}
    out["seconds"] = round(seconds, 2)
    out["cpu_seconds"] = round(cpu, 2)
    if objective == "priority":
        out["lambda_click_final"] = trainer.objective.lam["click"]
        out["lambda_click_max"] = max(lam)
        out["steps_lambda_positive"] = sum(v > 0 for v in lam)
        out["steps"] = trainer.step
    print(name, json.dumps(out), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--run-dir", default="runs/bench_multitask")
    p.add_argument("--data", default="data/synthetic_ctr_cvr")
    p.add_argument("--plot", help="write the AUC trade-off PNG here")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override")
    args = p.parse_args()
    cfg = load_config(
        ROOT / "examples" / "multitask_synthetic.yaml",
        [
            f"data.synthetic.num_train={args.rows}",
            f"data.path={args.data}",
            f"train.epochs={args.epochs}",
            "train.progress=false",
            "train.eval_every=null",
            "train.checkpoint_every=null",
            "train.tensorboard=false",
            f"threads={args.threads}",
            f"run_dir={args.run_dir}",
            *args.overrides,
        ],
    )
    torch.set_num_threads(args.threads)
    tol = next(t.tolerance for t in cfg.train.tasks if t.name == "click")
    single = run(cfg, [TaskConfig("click")], "weighted_sum", "single_click")
    prio = run(cfg, list(cfg.train.tasks), "priority", "priority")
    grid = {}
    for w in GRID:
        tasks = [TaskConfig("click", weight=w), TaskConfig("conversion", weight=round(1 - w, 2))]
        grid[w] = run(cfg, tasks, "weighted_sum", f"wsum_{w}")
    bound = (1 + tol) * single["click/logloss"]
    ok = [w for w in GRID if grid[w]["click/logloss"] <= bound]
    if ok:
        best = max(ok, key=lambda w: grid[w]["conversion/auc"])
    else:
        best = max(GRID, key=lambda w: grid[w]["click/auc"])
    grid_time = sum(g["seconds"] for g in grid.values())
    summary = {
        "priority_auc": {t: prio[f"{t}/auc"] for t in ("click", "conversion")},
        "grid_best_auc": {t: grid[best][f"{t}/auc"] for t in ("click", "conversion")},
        "grid_time_ratio": round(grid_time / prio["seconds"], 2),
        # CPU time: the same ratio, robust to other processes on a shared machine
        "grid_cpu_time_ratio": round(
            sum(g["cpu_seconds"] for g in grid.values()) / prio["cpu_seconds"], 2
        ),
        "grid_best_weight_click": best,
        "single_click_auc": single["click/auc"],
        "click_logloss": {
            "single": single["click/logloss"],
            "bound": bound,
            "priority": prio["click/logloss"],
            "grid_best": grid[best]["click/logloss"],
        },
        "grid": {str(w): g for w, g in grid.items()},
        "rows": args.rows,
        "epochs": args.epochs,
    }
    if args.plot:
        plot(grid, prio, single, bound, Path(args.plot))
    print(json.dumps(summary), file=sys.stdout, flush=True)


if __name__ == "__main__":
    main()
