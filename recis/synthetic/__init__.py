"""recis.synthetic: synthetic data with known ground truth (application layer).

Generators that write real parquet files, with the best score any model can reach on them
(the oracle AUC of the true probability or grade). They are not part of the readers: the
run entry (``data.synthetic`` in a run config), benchmarks and tests use them, and the
library below never imports them.

* :func:`generate_ctr` - a Criteo-like click log (13 dense, 26 sparse features);
* :func:`generate_ctr_cvr` - two tasks (click, conversion) with conflicting signals;
* :func:`generate_relevance` - query-product relevance grades driven by synonyms;
* :func:`generate_retrieval` - queries and items for dense retrieval.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from recis.config import DataConfig

from .ctr import SyntheticInfo, dense_names, generate_ctr, load_info, sparse_names
from .multitask import MultiTaskInfo, generate_ctr_cvr
from .relevance import generate_relevance
from .retrieval import generate_retrieval

# what a generator returns: its sizes, seed and oracle AUC
Info = SyntheticInfo | MultiTaskInfo


def prepare(data: DataConfig) -> Info | None:
    """Generate ``data.synthetic`` into ``data.path`` unless the same data is there already.

    None without ``data.synthetic``. Data already written with the same sizes and seed
    (its ``info.json``) is kept, so a resumed or repeated run reads the same rows.
    """
    s = data.synthetic
    if s is None:
        return None
    info_path = Path(data.path) / "info.json"
    wanted = (s.num_train, s.num_eval, s.seed)
    if s.kind == "ctr_cvr":
        if info_path.exists():
            mt = MultiTaskInfo(**json.loads(info_path.read_text()))
            if (mt.num_train, mt.num_eval, mt.seed) == wanted:
                return mt
        print(f"generating synthetic {s.kind} data in {data.path} ...", flush=True)
        return generate_ctr_cvr(data.path, s.num_train, s.num_eval, s.files, s.seed)
    info = load_info(data.path)
    if info is None or (info.num_train, info.num_eval, info.seed) != wanted:
        print(f"generating synthetic {s.kind} data in {data.path} ...", flush=True)
        generate = {
            "ctr": generate_ctr,
            "retrieval": generate_retrieval,
            "relevance": generate_relevance,
        }[s.kind]
        info = generate(data.path, s.num_train, s.num_eval, s.files, s.seed)
    return info


def oracle_metrics(info: Info | None) -> dict[str, Any]:
    """The oracle AUC to report beside a run's eval result: ``oracle_auc`` for one task,
    ``{task}/oracle_auc`` for each task of two-task data; empty without synthetic data."""
    if isinstance(info, SyntheticInfo):
        return {"oracle_auc": info.oracle_auc}
    if isinstance(info, MultiTaskInfo):
        return {f"{task}/oracle_auc": value for task, value in asdict(info)["oracle_auc"].items()}
    return {}


__all__ = [
    "Info",
    "MultiTaskInfo",
    "SyntheticInfo",
    "dense_names",
    "generate_ctr",
    "generate_ctr_cvr",
    "generate_relevance",
    "generate_retrieval",
    "load_info",
    "oracle_metrics",
    "prepare",
    "sparse_names",
]
