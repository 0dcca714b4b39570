"""Model-zoo quality benchmark: same data, same step budget, one process.

* CTR: HHFT vs DLRM vs DeepFM eval AUC on the synthetic CTR generator (with its oracle AUC),
  each trained from its example config (examples/*_synthetic.yaml) for ``--ctr-steps`` steps.
* Retrieval: dual tower Recall@50 over the full item corpus vs a popularity baseline
  (the 50 most clicked training items for every query) on the retrieval generator.
* Relevance: DeepBoW AUC vs a dense dual tower (same text encoder, cosine score) on the
  relevance generator, label = grade >= 2.

Usage: ``python benchmarks/quality.py [--quick] [--out DIR]``. The last line printed is one
JSON object with the keys hhft_auc, dlrm_auc, deepfm_auc, oracle_auc, two_tower_recall50,
popularity_recall50, deepbow_auc, dense_relevance_auc.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

ROOT = Path(__file__).resolve().parent.parent


def _train(example: str, data_dir: Path, run_dir: Path, overrides: list[str]) -> dict:
    """Train one example config on ``data_dir`` and return the eval result."""
    from recis.config import load_config
    from recis.train import runner

    cfg = load_config(
        ROOT / "examples" / example,
        [f"data.path={data_dir}", f"run_dir={run_dir}", "train.progress=false", *overrides],
    )
    t0 = time.perf_counter()
    trainer, info = runner.build(cfg)
    result = trainer.fit()
    result["seconds"] = time.perf_counter() - t0
    result["trainer"] = trainer
    result["info"] = info
    result["schema"] = cfg.data.schema_
    return result


def ctr(work: Path, steps: int, num_train: int, num_eval: int) -> dict[str, float]:
    data = [
        f"data.synthetic.num_train={num_train}",
        f"data.synthetic.num_eval={num_eval}",
        f"train.max_steps={steps}",
        "train.epochs=100",
    ]
    out: dict[str, float] = {}
    for key, example in (
        ("dlrm", "dlrm_synthetic.yaml"),
        ("deepfm", "deepfm_synthetic.yaml"),
        ("hhft", "hhft_synthetic.yaml"),
    ):
        res = _train(example, work / "ctr", work / f"run_{key}", data)
        out[f"{key}_auc"] = res["click/auc"]
        out["oracle_auc"] = res["info"].oracle_auc
        print(f"ctr {key}: auc {res['click/auc']:.4f} ({res['seconds']:.0f}s)", flush=True)
    return out


def retrieval(work: Path, steps: int, num_train: int) -> dict[str, float]:
    from recis.models.two_tower import build_index, evaluate_retrieval, read_relevant

    res = _train(
        "two_tower_synthetic.yaml",
        work / "retrieval",
        work / "run_two_tower",
        [
            f"data.synthetic.num_train={num_train}",
            f"train.max_steps={steps}",
            "train.epochs=100",
        ],
    )
    trainer = res["trainer"]
    model, schema, bs = trainer.model, res["schema"], 2048
    from recis.io import ParquetReader

    data = work / "retrieval"
    index = build_index(
        model,
        ParquetReader(
            data / "items.parquet",
            schema.__class__(sparse=[f for f in schema.sparse if f.name in model.item_features]),
            bs,
        ),
    )
    queries = ParquetReader(
        data / "queries.parquet",
        schema.__class__(sparse=[f for f in schema.sparse if f.name in model.query_features]),
        bs,
    )
    relevant = read_relevant(data / "queries.parquet")
    metrics = evaluate_retrieval(model, queries, index, relevant, ks=(50,))
    # popularity: the 50 most clicked items of the training split, for every query
    clicks = pq.read_table(data / "train", columns=["item_id", "label"])
    clicked = clicks.column("item_id").to_numpy()[clicks.column("label").to_numpy() > 0.5]
    ids, counts = np.unique(clicked, return_counts=True)
    top = ids[np.argsort(-counts, kind="stable")[:50]]
    pop = float(np.mean([np.isin(r, top).sum() / len(r) for r in relevant]))
    print(
        f"retrieval: two tower recall@50 {metrics['recall@50']:.4f} "
        f"ndcg@50 {metrics['ndcg@50']:.4f}, popularity {pop:.4f} ({res['seconds']:.0f}s)",
        flush=True,
    )
    return {"two_tower_recall50": metrics["recall@50"], "popularity_recall50": pop}


def relevance(work: Path, steps: int, num_train: int) -> dict[str, float]:
    out = {}
    for key, name in (("deepbow", "deepbow"), ("dense_relevance", "dense_relevance")):
        res = _train(
            "deepbow_synthetic.yaml",
            work / "relevance",
            work / f"run_{key}",
            [
                f"model.name={name}",
                f"data.synthetic.num_train={num_train}",
                f"train.max_steps={steps}",
                "train.epochs=100",
            ],
        )
        auc = res["relevant/auc"]
        out[f"{key}_auc"] = auc
        print(f"relevance {key}: auc {auc:.4f} ({res['seconds']:.0f}s)", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    p.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", default="ctr,retrieval,relevance")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    q = args.quick
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="recis_quality_"))
    result: dict[str, float] = {}
    parts = args.only.split(",")
    if "ctr" in parts:
        result.update(ctr(work, 30 if q else 300, 20_000 if q else 200_000, 5_000 if q else 50_000))
    if "retrieval" in parts:
        result.update(retrieval(work, 30 if q else 300, 20_000 if q else 100_000))
    if "relevance" in parts:
        result.update(relevance(work, 30 if q else 300, 20_000 if q else 50_000))
    print(json.dumps({k: round(v, 4) for k, v in result.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
