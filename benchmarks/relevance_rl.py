"""Relevance LLMs trained with RL on real data: TaoSR1 (SFT, DPO, GRPO), TaoSR-AGRL, TaoSR-SHE
and DyKnow-RAG vs BM25 on qbqtc, with a tiny causal LM trained from scratch on CPU.

Protocol: qbqtc's (``../shared/data/qbqtc/README.md``) query-hash 80/20 split, levels 0/1/2,
relevant = ``label == 2``; ``--train`` pairs drawn (seeded) from the train part, ``--test``
from the test part. The model: a random-initialised Llama (``--hidden``, 2 layers) with a
byte-level BPE tokenizer trained on the training prompts (``recis.llm.model``). One
``kind: relevance_llm`` run (``recis.llm.pipeline``): SFT, then DPO, GRPO, AGRL, SHE and
DyKnow-RAG, each starting from the SFT model with the same budget (``--rl-steps`` steps of
``--rl-batch`` completions). DyKnow-RAG's corpus: the titles of the train part's label-2 pairs
(``--corpus-unseen``: only of queries other than the ``--train`` pairs', so that no training
query finds its own answer in it, as no test query does)
(BM25 over character 1-2-grams; a chunk equal to the pair's own title is skipped;
``--retriever dense``: recis' dense retriever instead, the dual encoder of a ``retrieval_grpo``
run trained here first, InfoNCE only, ``--dual-steps`` steps, on the train part's pairs with
``label == 2`` as positives).

Keys (last line, one JSON object): ``<stage>_auc`` (ROC-AUC of the one-pass serving score,
``label == 2``), ``<stage>_acc`` and ``<stage>_acc_level_k`` (argmax level), ``<stage>_seconds``
and ``<stage>_cpu_seconds`` (training wall / CPU time), ``<stage>_examples`` (completions
trained on), ``dyknow_no_context_auc`` (the DyKnow model with the chunk left out),
``bm25_auc`` (recis.io.lexical BM25 over the same test pairs), ``<stage>_vs_sft`` (AUC ratio),
``sft_more_*`` (SFT continued from the SFT model for the RL stages' budget of examples: the
like-for-like reference of the RL stages), ``<stage>_no_context_auc``,
``load_before/after`` (load average: the machine is shared), ``retriever`` and with ``dense``
``dual_seconds`` (training the dual encoder).

Usage: ``python benchmarks/relevance_rl.py [--train 2000 --test 1000 --sft-steps 200 ...]``
(``--work DIR --resume``: train only the stages missing from DIR's run);
prints ``{"skipped": reason}`` without the shared data or trl.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "qbqtc"
RL_STAGES = ("dpo", "grpo", "agrl", "she", "dyknow")


def split(src: Path, n_train: int, n_test: int, seed: int) -> tuple[list[dict], list[dict]]:
    import pyarrow.parquet as pq

    rows = pq.read_table(src / "pairs.parquet", columns=["query", "title", "label"]).to_pylist()
    train, test = [], []
    for r in rows:
        bucket = int(hashlib.md5(r["query"].encode("utf-8")).hexdigest()[:8], 16) % 100
        (train if bucket < 80 else test).append(r)
    rng = random.Random(seed)
    return (
        rng.sample(train, min(n_train, len(train))),
        rng.sample(test, min(n_test, len(test))),
        train,
    )


def bm25_auc(train: list[dict], test: list[dict]) -> float | None:
    from recis.io.lexical import LexicalMatcher
    from recis.metrics import auc

    m = LexicalMatcher.fit([r["query"] for r in train], [r["title"] for r in train])
    x = m.features([r["query"] for r in test], [r["title"] for r in test])
    return auc(x[:, 1], np.array([r["label"] == 2 for r in test], dtype=np.float64))


def config(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    rl = {
        "init": "sft",
        "max_steps": args.rl_steps,
        "batch_size": args.rl_batch,
        "learning_rate": args.rl_lr,
        "num_generations": args.generations,
        "max_completion_length": 12,
        "logging_steps": 1,
    }
    return {
        "kind": "relevance_llm",
        "run_dir": str(work / "run"),
        "model": {
            "scratch": {"hidden_size": args.hidden, "layers": 2, "heads": 4, "vocab_size": 2000}
        },
        "data": {"train": str(work / "train.parquet"), "eval": str(work / "test.parquet")},
        "levels": {"names": ["0", "1", "2"], "relevant_from": 2},
        "retriever": {"corpus": str(work / "corpus.parquet")},
        "eval_batch_size": 64,
        "stages": [
            {
                "kind": "sft",
                "max_steps": args.sft_steps,
                "batch_size": 16,
                "learning_rate": args.sft_lr,
                "logging_steps": 20,
            },
            {
                "kind": "dpo",
                "init": "sft",
                "max_steps": args.rl_steps,
                "batch_size": args.rl_batch // args.generations * 2,
                "learning_rate": args.rl_lr,
                "pool": args.rl_steps * args.rl_batch // args.generations,
                "samples": args.generations,
                "max_completion_length": 12,
                "logging_steps": 1,
            },
            {"kind": "grpo", **rl},
            {"kind": "agrl", **rl},
            {
                "kind": "she",
                **rl,
                "reward_model_steps": args.rl_steps * 2,
                "pool": 8 * args.rl_steps * args.rl_batch // args.generations,
            },
            {"kind": "dyknow", **rl, "pool": 8 * args.rl_steps * args.rl_batch // args.generations},
            # SFT continued from the same start at the RL stages' budget of examples
            {
                "kind": "sft",
                "name": "sft_more",
                "init": "sft",
                "max_steps": args.rl_steps,
                "batch_size": args.rl_batch,
                "learning_rate": args.sft_lr,
                "logging_steps": 1,
            },
        ],
    }


def dual_encoder(work: Path, pairs: list[dict], steps: int) -> Path:
    """Train the dense retriever (``kind: retrieval_grpo``, InfoNCE only) on ``pairs``; its
    config file."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from recis.cli import main as cli

    pq.write_table(pa.Table.from_pylist(pairs), work / "dual_pairs.parquet")
    cfg = {
        "kind": "retrieval_grpo",
        "run_dir": str(work / "dual"),
        "data": {"path": str(work / "dual_pairs.parquet"), "positive": 2, "split": None},
        "infonce": {"steps": steps},
        "grpo": {"steps": 0},
    }
    path = work / "dual.yaml"
    path.write_text(yaml.safe_dump(cfg))
    trained = (work / "dual" / "infonce" / "model").exists()
    if not trained and cli(["train", str(path), "--overwrite"]) != 0:
        raise SystemExit("training the dual encoder failed")
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--sft-steps", type=int, default=200)
    p.add_argument("--sft-lr", type=float, default=2e-3)
    p.add_argument("--rl-steps", type=int, default=10)
    p.add_argument("--rl-batch", type=int, default=16)
    p.add_argument("--rl-lr", type=float, default=1e-4)
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--corpus-unseen", action="store_true", help="no training query's answer in the corpus"
    )
    p.add_argument("--retriever", choices=["bm25", "dense"], default="bm25")
    p.add_argument("--dual-steps", type=int, default=300, help="InfoNCE steps (dense)")
    p.add_argument("--work", help="working directory (default: a temporary one)")
    p.add_argument(
        "--resume", action="store_true", help="reuse --work's run: only missing stages train"
    )
    args = p.parse_args()
    if not (DATA / "pairs.parquet").is_file():
        print(json.dumps({"skipped": f"no {DATA}/pairs.parquet"}))
        return
    try:
        import trl  # noqa: F401
    except ImportError:
        print(json.dumps({"skipped": "trl is not installed (the llm extra)"}))
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recis.llm.config import build_llm_config
    from recis.llm.pipeline import train

    load_before = os.getloadavg()[0]
    work = Path(args.work or tempfile.mkdtemp(prefix="relevance_rl_"))
    work.mkdir(parents=True, exist_ok=True)
    train_rows, test_rows, all_train = split(DATA, args.train, args.test, args.seed)
    pq.write_table(pa.Table.from_pylist(train_rows), work / "train.parquet")
    pq.write_table(pa.Table.from_pylist(test_rows), work / "test.parquet")
    # --corpus-unseen: the corpus holds no answer of a training query (a training pair's chunk
    # is otherwise often its own query's relevant title, which no test query ever gets)
    seen = {r["query"] for r in train_rows} if args.corpus_unseen else set()
    corpus = sorted({r["title"] for r in all_train if r["label"] == 2 and r["query"] not in seen})
    pq.write_table(pa.table({"text": corpus}), work / "corpus.parquet")
    out: dict[str, Any] = {"bm25_auc": bm25_auc(all_train, test_rows)}
    raw, retriever = config(work, args), None
    if args.retriever == "dense":
        start = time.perf_counter()
        dual = dual_encoder(work, all_train, args.dual_steps)
        out["dual_seconds"] = time.perf_counter() - start
        raw["retriever"].update(kind="dense", run_config=str(dual))
    start = time.perf_counter()
    cfg = build_llm_config(raw)
    if args.retriever == "dense":
        from recis.retrieval_rl.chunks import DenseChunkRetriever

        assert cfg.retriever is not None
        retriever = DenseChunkRetriever.from_config(cfg.retriever)
    results = train(cfg, args.resume, not args.resume, retriever)
    out["total_seconds"] = time.perf_counter() - start
    for stage, m in results.items():
        out[f"{stage}_auc"] = m.get("auc")
        out[f"{stage}_acc"] = m.get("accuracy")
        for k in range(3):
            out[f"{stage}_acc_level_{k}"] = m.get(f"acc_level_{k}")
        out[f"{stage}_seconds"] = m["seconds"]
        out[f"{stage}_cpu_seconds"] = m["cpu_seconds"]
        out[f"{stage}_examples"] = m["steps"] * (16 if stage == "sft" else args.rl_batch)
        out[f"{stage}_no_context_auc"] = m.get("no_context_auc")
    out["dyknow_no_context_auc"] = results["dyknow"].get("no_context_auc")
    for stage in (*RL_STAGES, "sft_more"):
        if out.get(f"{stage}_auc") and out.get("sft_auc"):
            out[f"{stage}_vs_sft"] = out[f"{stage}_auc"] / out["sft_auc"]
    out.update(vars(args), load_before=load_before, load_after=os.getloadavg()[0], work=str(work))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
