"""Exported scores against ``recis eval``'s on the same rows (the run's eval data)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from recis import metrics
from recis.models.two_tower import TwoTower, exact_topk

from .loading import load_version
from .retrieval import RetrievalModel
from .source import load_run


def near_pair_share(scores: np.ndarray, labels: np.ndarray, gap: float) -> float:
    """The share of (positive, negative) pairs whose scores are at most ``gap`` apart: the
    most an AUC can move when every score moves by at most ``gap / 2`` (only those pairs can
    change order). 0 without both classes."""
    pos, neg = np.sort(scores[labels > 0.5]), np.sort(scores[labels <= 0.5])
    if not len(pos) or not len(neg):
        return 0.0
    near = np.searchsorted(neg, pos + gap, "right") - np.searchsorted(neg, pos - gap, "left")
    return float(near.sum()) / (len(pos) * len(neg))


def eval_parity(run_dir: str | Path, version_dir: str | Path) -> dict[str, Any]:
    """Per task: the largest |exported - eval| score over the run's eval rows, both AUCs and
    ``auc_flip_bound`` (:func:`near_pair_share` at twice that difference: how far the AUC
    may move from those differences alone).

    The eval side is the trainer's own prediction (:meth:`recis.train.Trainer.predict`,
    what ``recis eval`` reports from) with the same checkpoint the export was made from; the
    export side reads the same batches (recis.io's conversion) through the exported files."""
    model = load_version(version_dir)
    _, trainer, _, _ = load_run(run_dir, model.manifest["source"]["checkpoint"])
    assert trainer.eval_data is not None, "the run has no eval data"
    preds, labels = trainer.predict(trainer.eval_data)
    parts = [model.score_batch(b) for b in trainer.eval_data]
    out: dict[str, Any] = {}
    for task, ref in preds.items():
        got = np.concatenate([p[task] for p in parts])
        auc_eval, auc_export = metrics.auc(ref, labels[task]), metrics.auc(got, labels[task])
        diff = float(np.abs(got - ref).max()) if len(ref) else 0.0
        out[task] = {
            "rows": int(len(ref)),
            "max_abs_diff": diff,
            "auc_flip_bound": near_pair_share(ref, labels[task], 2 * diff),
            "auc_eval": auc_eval,
            "auc_export": auc_export,
            "auc_delta": None if auc_eval is None or auc_export is None else auc_export - auc_eval,
        }
    return out


def retrieval_parity(run_dir: str | Path, version_dir: str | Path, k: int = 10) -> dict[str, Any]:
    """A two-tower export against the eval model on the run's eval rows (as queries).

    ``query_max_abs_diff``: exported query tower vs :meth:`TwoTower.encode_queries`
    (the index holds the eval model's own item vectors); ``topk_equal``: the fraction
    of rows whose served top-``k`` ids equal a brute-force ranking (eval query vectors
    against the eval item vectors); ``topk_score_max_abs_diff`` between both rankings."""
    served = RetrievalModel(version_dir)
    _, trainer, _, _ = load_run(run_dir, served.manifest["source"]["checkpoint"])
    model = trainer.model
    assert isinstance(model, TwoTower) and trainer.eval_data is not None
    items = served.items.embeddings  # [N, D]
    q_diff, same, s_diff, rows = 0.0, 0, 0.0, 0
    with torch.no_grad():
        for batch in trainer.eval_data:
            ref = model.encode_queries(batch).float()  # [B, D]
            got = served.towers["query"].encode(batch)
            q_diff = max(q_diff, float((got - ref).abs().max()))
            ref_s, ref_rows = exact_topk(ref, items, k)
            ids, scores = served.items.search(got, k)
            same += int((ids == served.items.ids[ref_rows.numpy()]).all(axis=1).sum())
            s_diff = max(s_diff, float(np.abs(scores - ref_s.numpy()).max()))
            rows += batch.batch_size
    return {
        "rows": rows,
        "k": k,
        "query_max_abs_diff": q_diff,
        "topk_equal": same / max(rows, 1),
        "topk_score_max_abs_diff": s_diff,
    }
