"""Two-task (click / conversion) synthetic data with known ground truth and conflicting signals.

:func:`generate_ctr_cvr` writes parquet files with 8 dense features
``x1..x8`` (standard normal), three id features ``user_id`` (2,000 users),
``item_id`` (5,000 items) and ``category`` (100), both labels and both true
probabilities. The true logits are

    click      = b_c + s * <x, u> + item_c[item] + user_c[user]
    conversion = b_v + s * <x, v> + item_v[item] + cat_v[category]

with unit vectors ``u``, ``v`` at cosine ``conflict`` (default -0.6: the
dense signals pull a shared representation in opposite directions) and item
effects correlated +0.5 between the tasks (the shared, helpful part). The
conversion label is drawn independently of the click (post-view
conversion), so both tasks have enough positives for a stable AUC. The
oracle AUC of each task (AUC of its true probability on the eval split) is
stored in ``info.json``. Deterministic by seed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from recis.metrics import auc

from .ctr import write_parquet_parts

NUM_DENSE = 8
CARDS = {"user_id": 2000, "item_id": 5000, "category": 100}
TASKS = ("click", "conversion")


@dataclass
class MultiTaskInfo:
    """What :func:`generate_ctr_cvr` wrote and the best achievable AUC per task."""

    path: str
    num_train: int
    num_eval: int
    seed: int
    conflict: float
    oracle_auc: dict[str, float | None] = field(default_factory=dict)  # None: one class
    positive_rate: dict[str, float] = field(default_factory=dict)


class _TwoTaskModel:
    def __init__(self, seed: int, conflict: float, scale: float) -> None:
        rng = np.random.default_rng([seed, 0x3D])
        u = rng.normal(size=NUM_DENSE)
        u /= np.linalg.norm(u)
        w = rng.normal(size=NUM_DENSE)
        w -= (w @ u) * u
        w /= np.linalg.norm(w)
        self.u = u
        self.v = conflict * u + np.sqrt(max(1.0 - conflict**2, 0.0)) * w  # cos(u, v) = conflict
        self.scale = scale
        item = rng.normal(size=(CARDS["item_id"], 2))
        self.item_c = 0.6 * item[:, 0]
        self.item_v = 0.6 * (0.5 * item[:, 0] + np.sqrt(0.75) * item[:, 1])
        self.user_c = rng.normal(0.0, 0.5, size=CARDS["user_id"])
        self.cat_v = rng.normal(0.0, 0.5, size=CARDS["category"])
        self.perm = {k: rng.permutation(c) for k, c in CARDS.items()}
        self.probs = {}
        for k, c in CARDS.items():
            p = 1.0 / np.arange(1, c + 1) ** 1.05
            self.probs[k] = p / p.sum()

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        x = rng.normal(size=(n, NUM_DENSE))
        ids = {k: self.perm[k][rng.choice(c, size=n, p=self.probs[k])] for k, c in CARDS.items()}
        click = -1.0 + self.scale * (x @ self.u) + self.item_c[ids["item_id"]]
        click += self.user_c[ids["user_id"]]
        conv = -1.5 + self.scale * (x @ self.v) + self.item_v[ids["item_id"]]
        conv += self.cat_v[ids["category"]]
        cols: dict[str, np.ndarray] = {
            f"x{j + 1}": x[:, j].astype(np.float32) for j in range(NUM_DENSE)
        }
        cols.update({k: v.astype(np.int64) for k, v in ids.items()})
        for name, logit in (("click", click), ("conversion", conv)):
            p = 1.0 / (1.0 + np.exp(-logit))
            cols[f"p_{name}"] = p.astype(np.float32)
            cols[name] = (rng.random(n) < p).astype(np.float32)
        return cols


def generate_ctr_cvr(
    path: str | Path,
    num_train: int = 200_000,
    num_eval: int = 50_000,
    files: int = 2,
    seed: int = 0,
    conflict: float = -0.6,
    scale: float = 2.0,
) -> MultiTaskInfo:
    """Write ``path/train`` and ``path/eval`` parquet splits and ``path/info.json``.

    Args:
        path: output folder.
        num_train: training rows; num_eval: eval rows; files: parquet files per split.
        seed: everything is a function of it.
        conflict: cosine between the two tasks' dense directions (< 0 conflicts).
        scale: strength of the dense signal in both logits.
    """
    path = Path(path)
    model = _TwoTaskModel(seed, conflict, scale)
    train = model.sample(num_train, np.random.default_rng([seed, 1]))
    evals = model.sample(num_eval, np.random.default_rng([seed, 2]))
    write_parquet_parts(pa.table(train), path / "train", files)
    write_parquet_parts(pa.table(evals), path / "eval", max(1, files // 2))
    info = MultiTaskInfo(
        path=str(path),
        num_train=num_train,
        num_eval=num_eval,
        seed=seed,
        conflict=conflict,
        oracle_auc={t: auc(evals[f"p_{t}"], evals[t]) for t in TASKS},
        positive_rate={t: float(evals[t].mean()) for t in TASKS},
    )
    (path / "info.json").write_text(json.dumps(asdict(info), indent=2) + "\n")
    return info
