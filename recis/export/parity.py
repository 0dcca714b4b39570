"""Exported scores against ``recis eval``'s on the same rows (the run's eval data)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from recis import metrics

from .model import ServingModel
from .source import load_run


def eval_parity(run_dir: str | Path, version_dir: str | Path) -> dict[str, Any]:
    """Per task: the largest |exported - eval| score over the run's eval rows, and both AUCs.

    The eval side is the trainer's own prediction (:meth:`recis.train.Trainer.predict`,
    what ``recis eval`` reports from) with the same checkpoint the export was made from; the
    export side reads the same batches (recis.io's conversion) through the exported files."""
    model = ServingModel(version_dir)
    _, trainer, _, _ = load_run(run_dir, model.manifest["source"]["checkpoint"])
    assert trainer.eval_data is not None, "the run has no eval data"
    preds, labels = trainer.predict(trainer.eval_data)
    parts = [model.score_batch(b) for b in trainer.eval_data]
    out: dict[str, Any] = {}
    for task, ref in preds.items():
        got = np.concatenate([p[task] for p in parts])
        auc_eval, auc_export = metrics.auc(ref, labels[task]), metrics.auc(got, labels[task])
        out[task] = {
            "rows": int(len(ref)),
            "max_abs_diff": float(np.abs(got - ref).max()) if len(ref) else 0.0,
            "auc_eval": auc_eval,
            "auc_export": auc_export,
            "auc_delta": None if auc_eval is None or auc_export is None else auc_export - auc_eval,
        }
    return out
