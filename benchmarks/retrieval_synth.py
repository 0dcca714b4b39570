"""Query-rewrite synthesis on qbqtc: InfoNCE recall with vs without synthesized pairs (issue 19).

    .venv/bin/python benchmarks/retrieval_synth.py [--data ../shared/data] [--work runs/bench_synth]
        [--infonce-steps 300] [--sft-steps 800] [--grpo-steps 20] [--seeds 0 1]

Data: ``qbqtc/pairs.parquet``; pool = every distinct title (22,984); ``dev`` positives
(label >= 1) train, ``test_public`` positives are the relevant items; long-tail = queries that
never occur in ``dev`` (``tail_max_count: 0``, as in benchmarks/retrieval_rl.py).

1. Synthesis (:func:`recis.retrieval_rl.synth_run.synthesize`): a scratch Llama rewriter
   (BPE tokenizer trained on the text), SFT on the dev positives (query -> title cut to 16
   characters), GRPO on the three rewrite rewards; then ``M = 4`` rewrites for every long-tail
   query of the pairs file (frequency = its dev rows: 0), BM25 top-20 per text, pairs kept
   at lexical relevance >= 0.8, at most 5 per query. The long-tail query TEXTS are the
   synthesis input (the method's setting: queries without behaviour logs); no test label is
   read by the synthesis, the relevance model is fitted on the dev labels only.
   Three pair sets: ``rewrites`` (the rewrites' results only), ``synth`` (the rewrites and
   the original query as candidates), ``control`` (the original query alone: no rewriter),
   so the rewriter's share of any gain is visible.
2. Retrievers: the InfoNCE dual encoder of :mod:`recis.retrieval_rl` trained on dev positives
   alone (``infonce``) and + each pair set (``data.extra_train``), same steps, per seed;
   full-pool Recall@50 on every test query, and on the long-tail ones (medians over seeds).

The rewriter's torch runs want one thread on a shared machine (``OMP_NUM_THREADS=1``: SFT
steps were 18x faster at load ~20 than with two spinning threads). Prints the tail ratio
(with / without) and, last, one JSON object (``synth_recall50``, ``tail_synth_recall50``,
``infonce_recall50``, ``tail_infonce_recall50``, ``rewrites_*``, ``control_*``, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]


def query_set(pairs: Path, out: Path) -> Path:
    """Distinct queries of the pairs file with ``count`` = their dev rows."""
    t = pq.read_table(pairs, columns=["query", "split"])
    dev = pc.equal(t.column("split"), "dev").to_numpy(zero_copy_only=False)
    counts: dict[str, int] = {}
    for q, d in zip(t.column("query").to_pylist(), dev.tolist()):
        counts[q] = counts.get(q, 0) + int(d)
    pq.write_table(pa.table({"query": list(counts), "count": list(counts.values())}), out)
    return out


def synthesize(data: Path, work: Path, args: Any, name: str) -> dict[str, Any]:
    """``rewrites``: train the rewriter, harvest its rewrites' results; ``synth``: the same
    rewriter's rewrites plus the original query; ``control``: the original query alone."""
    from recis.retrieval_rl.synth_config import build_config
    from recis.retrieval_rl.synth_run import synthesize as run

    pairs = data / "qbqtc" / "pairs.parquet"
    trained = work / "rewrites_run" / "rewriter" / ("grpo" if args.grpo_steps else "sft")
    reuse = name == "synth"  # the rewriter the "rewrites" side trained
    cfg = build_config(
        {
            "kind": "query_rewrite",
            "run_dir": str(work / f"{name}_run"),
            "pairs": {"path": str(pairs)},
            "queries": {
                "path": str(query_set(pairs, work / "queries.parquet")),
                "count": "count",
                "tail_max_count": 0,
            },
            "model": {
                "path": str(trained / "model") if reuse else None,
                "scratch": {"hidden_size": 64, "layers": 2, "heads": 4, "vocab_size": 3000},
            },
            "sft": {
                "max_steps": 0 if reuse else args.sft_steps,
                "batch_size": 32,
                "learning_rate": 2e-3,
                "max_rewrite_chars": 16,
            },
            "grpo": {
                "max_steps": 0 if reuse else args.grpo_steps,
                "batch_size": 16,
                "num_generations": 4,
                "max_completion_length": 16,
                "queries": 512,
            },
            "retriever": {"depth": 20},
            "synth": {
                "out": str(work / f"{name}.parquet"),
                "num_rewrites": 4,
                "max_new_tokens": 16,
                "min_relevance": args.min_relevance,
                "max_pairs_per_query": 5,
                "use_rewrites": name != "control",
                "include_original": name != "rewrites",
                "batch_size": 128,
            },
        }
    )
    got = run(cfg, resume=args.resume, overwrite=True)
    got.pop("stages", None)
    return {"out": cfg.synth.out, **got}


def retrieval(data: Path, extra: str | None, seed: int, steps: int) -> dict[str, float]:
    """InfoNCE on dev positives (+ ``extra`` pairs), evaluated on every test query."""
    import torch

    from recis.retrieval_rl.config import build_config
    from recis.retrieval_rl.data import load_pairs
    from recis.retrieval_rl.evaluate import evaluate
    from recis.retrieval_rl.pipeline import build_encoder
    from recis.retrieval_rl.trainer import train_infonce

    cfg = build_config(
        {
            "kind": "retrieval_grpo",
            "run_dir": "unused",
            "data": {
                "path": str(data / "qbqtc" / "pairs.parquet"),
                "extra_train": [{"path": extra}] if extra else [],
            },
            "infonce": {"steps": steps, "batch_size": 256},
            "eval": {"ks": [10, 50], "tail_max_count": 0},
            "seed": seed,
        }
    )
    torch.manual_seed(seed)
    d = load_pairs(cfg.data)
    model = build_encoder(cfg, d)
    t0 = time.perf_counter()
    train_infonce(model, d, cfg.infonce, seed)
    got = evaluate(model, d, cfg.eval)
    got["train_pairs"] = float(len(d.train_queries))
    got["seconds"] = time.perf_counter() - t0
    return got


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_synth")
    p.add_argument("--infonce-steps", type=int, default=300)
    p.add_argument("--sft-steps", type=int, default=800)
    p.add_argument("--grpo-steps", type=int, default=20)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--min-relevance", type=float, default=0.8)
    p.add_argument("--resume", action="store_true", help="reuse the saved rewriter stages")
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole comparison (``parser()``'s arguments); benchmarks/retrieval_rl.py calls it."""
    out: dict[str, Any] = {"loadavg_start": os.getloadavg()[0]}
    if not (args.data / "qbqtc" / "pairs.parquet").is_file():
        return {"synth_skipped": f"{args.data}/qbqtc/pairs.parquet absent"}
    args.work.mkdir(parents=True, exist_ok=True)
    made = {n: synthesize(args.data, args.work, args, n) for n in ("rewrites", "synth", "control")}
    print("synthesized pairs: " + str({n: m["pairs"] for n, m in made.items()}), flush=True)
    sides: list[tuple[str, str | None]] = [("infonce", None)]
    sides += [(n, m["out"]) for n, m in made.items()]
    runs: dict[str, list[dict[str, float]]] = {n: [] for n, _ in sides}
    for seed in args.seeds:  # the sides alternate per seed
        for name, extra in sides:
            runs[name].append(retrieval(args.data, extra, seed, args.infonce_steps))
            r = runs[name][-1]
            print(
                f"seed {seed} {name}: recall@50 {r['recall@50']:.4f} tail {r['tail_recall@50']:.4f}"
            )
    for name, got in runs.items():
        for key, metric in (("recall50", "recall@50"), ("tail_{}_recall50", "tail_recall@50")):
            label = f"{name}_{key}" if "{}" not in key else key.format(name)
            out[label] = statistics.median(r[metric] for r in got)
        out[f"head_{name}_recall50"] = statistics.median(r["head_recall@50"] for r in got)
        out[f"{name}_train_pairs"] = got[0]["train_pairs"]
    out["synth_vs_infonce_tail_recall50"] = (
        out["tail_synth_recall50"] / out["tail_infonce_recall50"]
    )
    out["synth_vs_control_tail_recall50"] = (
        out["tail_synth_recall50"] / out["tail_control_recall50"]
    )
    for n, m in made.items():
        out.update({f"{n}_{k}": v for k, v in m.items() if k != "out"})
    out["per_seed"] = {k: [round(r["tail_recall@50"], 4) for r in v] for k, v in runs.items()}
    out["eval_queries"], out["tail_queries"] = (
        runs["infonce"][0]["queries"],
        runs["infonce"][0]["tail_queries"],
    )
    out["seeds"], out["loadavg_end"] = args.seeds, os.getloadavg()[0]
    return out


def main() -> None:
    out = run(parser().parse_args())
    if "synth_vs_infonce_tail_recall50" in out:
        ratio = out["synth_vs_infonce_tail_recall50"]
        print(f"tail recall@50 with / without synthesized pairs: {ratio:.3f}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
