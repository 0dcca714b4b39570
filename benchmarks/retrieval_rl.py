"""Retrieval-GRPO vs InfoNCE on qbqtc, and the cost of a GRPO step (issue 19).

    .venv/bin/python benchmarks/retrieval_rl.py [--data ../shared/data] [--work runs/bench_retrieval_rl]
        [--infonce-steps 1200] [--grpo-steps 50] [--grpo-lr 3e-4] [--beta 0.1] [--exclusivity 0.1]
        [--holdout] [--control] [--eval-queries 0] [--timing-steps 20]
        [--lrem [--lrem-sft-steps 300] [--lrem-rl-steps 40] [--lrem-tokens 8]]

1. Quality, on ``qbqtc/pairs.parquet`` (query -> web-page title, graded labels): the pool is
   every distinct title (22,984); ``dev`` positives (label >= 1) train, ``test_public``
   positives are the relevant items. qbqtc rather than ml_latest_small because the method
   needs a relevance model to reward retrieved items, and qbqtc's labels train one (the
   built-in lexical logistic scorer, fitted on the dev labels) - it is also the judge of
   relevance@10. Long-tail = eval queries absent from dev. The run is
   :func:`recis.retrieval_rl.pipeline.train`: InfoNCE, then GRPO from it (reward = relevance
   + click + 0.5 exclusivity against a BM25 channel), both evaluated on the full pool.
2. Step cost: 1e5 random items, dim 64, K 32, batch 256, hashed-gram towers; InfoNCE step vs
   GRPO step (click reward, so the reward model's cost is left out), the index rebuilt every
   ``--refresh`` steps and its cost spread over them; alternating sides, medians with
   min/max, ``os.getloadavg()`` beside. The search's share of the GRPO step and its distance
   from the matrix-product FLOP limit (search matmul seconds vs ``2 B N D`` FLOPs at the
   GEMM rate measured here on a square product).
3. LREM (``--lrem``): the same data and pool; a tiny Llama (2 layers, hidden 64, a 4,000-token
   BPE tokenizer trained on the pairs' texts) trained from scratch on CPU as the query tower
   (:mod:`recis.retrieval_rl.lrem_pipeline`), SFT + InfoNCE then RL over sampled reasonings,
   every query routed to it; ``lrem_infonce_recall50`` is the same run's two-tower on the same
   queries. At that size LREM is not expected to beat the two-tower.

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def quality(
    data_dir: Path, work: Path, infonce_steps: int, grpo_steps: int, queries: int, args: Any
) -> dict:
    from recis.retrieval_rl.config import build_config
    from recis.retrieval_rl.pipeline import train

    cfg = build_config(
        {
            "kind": "retrieval_grpo",
            "run_dir": str(work / args.name),
            "init_from": args.init_from,
            "data": _pairs(data_dir, work, args.holdout),
            "infonce": {"steps": infonce_steps, "batch_size": 256},
            "grpo": {
                "steps": grpo_steps,
                "batch_size": 128,
                "k": 32,
                "lr": args.grpo_lr,
                "beta": args.beta,
                "checkpoint_every": max(grpo_steps, 1),
                "rewards": {"relevance": 1.0, "click": 1.0, "exclusivity": args.exclusivity},
            },
            "eval": {"ks": [10, 50], "max_queries": queries},
        }
    )
    t0 = time.perf_counter()
    res = train(cfg, overwrite=True)
    inf, grpo = res["infonce"], res["grpo"]
    control = _control(cfg, args) if args.control else {}
    return {
        **control,
        "infonce_recall50": inf["recall@50"],
        "grpo_recall50": grpo["recall@50"],
        "infonce_relevance_at10": inf["relevance@10"],
        "grpo_relevance_at10": grpo["relevance@10"],
        "tail_infonce_recall50": inf["tail_recall@50"],
        "tail_grpo_recall50": grpo["tail_recall@50"],
        "head_infonce_recall50": inf.get("head_recall@50"),  # None: every query is tail
        "head_grpo_recall50": grpo.get("head_recall@50"),
        "infonce_ndcg10": inf["ndcg@10"],
        "grpo_ndcg10": grpo["ndcg@10"],
        "eval_queries": inf["queries"],
        "tail_queries": inf["tail_queries"],
        "quality_seconds": time.perf_counter() - t0,
        "grpo_lr": args.grpo_lr,
        "beta": args.beta,
        "exclusivity": args.exclusivity,
        "holdout": args.holdout,
        "grpo_steps": grpo_steps,
        "infonce_steps": infonce_steps,
    }


def _pairs(data_dir: Path, work: Path, holdout: bool) -> dict[str, Any]:
    """The data section: qbqtc's dev/test_public split, or with ``holdout`` the dev rows alone
    with 20% of their queries (by a hash of the text) held out as the eval queries: where the
    stage's settings are chosen without looking at test_public."""
    src = data_dir / "qbqtc" / "pairs.parquet"
    if not holdout:
        return {"path": str(src)}
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(src)
    work.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.filter(pc.equal(table["split"], "dev")), work / "dev_pairs.parquet")
    return {"path": str(work / "dev_pairs.parquet"), "split": None, "eval_fraction": 0.2}


def _control(cfg: Any, args: Any) -> dict:
    """InfoNCE alone continued from the same start for as many steps, batch and learning rate
    as the GRPO stage: what the stage's InfoNCE term would do without the GRPO loss."""
    from recis.retrieval_rl.config import InfoNCEConfig
    from recis.retrieval_rl.data import load_pairs
    from recis.retrieval_rl.evaluate import evaluate
    from recis.retrieval_rl.pipeline import build_encoder
    from recis.retrieval_rl.rewards import LexicalRelevanceScorer
    from recis.retrieval_rl.trainer import load, train_infonce

    data = load_pairs(cfg.data)
    scorer = LexicalRelevanceScorer.fit(*data.labelled, positive=cfg.data.positive)
    model = build_encoder(cfg, data)
    start = Path(cfg.init_from or cfg.run_dir) / "infonce" / "model"
    load(start, model, None)
    g = cfg.grpo
    nce = InfoNCEConfig(
        steps=g.steps, batch_size=g.batch_size, lr=g.lr, temperature=cfg.infonce.temperature
    )
    train_infonce(model, data, nce, cfg.seed + 1)
    got = evaluate(model, data, cfg.eval, scorer)
    return {
        "control_infonce_recall50": got["recall@50"],
        "control_infonce_relevance_at10": got["relevance@10"],
        "control_tail_infonce_recall50": got["tail_recall@50"],
    }


def lrem(data_dir: Path, work: Path, queries: int, args: Any) -> dict:
    """LREM on qbqtc: a tiny Llama trained from scratch on CPU (a BPE tokenizer trained on the
    pairs' texts), SFT + InfoNCE then RL, every query routed to LREM (``router.rule: all``),
    then the trained tower re-evaluated with the ``overlap`` router. The InfoNCE dual encoder
    (its item tower encodes the pool) is ``--init-from``'s or trained here."""
    from recis.retrieval_rl.lrem_config import build_lrem_config
    from recis.retrieval_rl.lrem_pipeline import evaluate_stage, train

    raw = {
        "kind": "lrem",
        "run_dir": str(work / f"{args.name}_lrem"),
        "init_from": args.init_from,
        "data": {"path": str(data_dir / "qbqtc" / "pairs.parquet")},
        "infonce": {"steps": args.infonce_steps, "batch_size": 256},
        "lm": {
            "max_reasoning_tokens": args.lrem_tokens,
            "scratch": {"hidden_size": 64, "layers": 2, "heads": 4, "vocab_size": 4000},
        },
        "sft": {
            "steps": args.lrem_sft_steps,
            "batch_size": 64,
            "lr": 3e-3,
            "checkpoint_every": 1000,
        },
        "rl": {
            "steps": args.lrem_rl_steps,
            "batch_size": 16,
            "group_size": 4,
            "k": 100,
            "lr": 1e-4,
            "checkpoint_every": 1000,
        },
        "router": {"rule": "all"},
        "eval": {"ks": [10, 50], "max_queries": queries},
        "seed": args.lrem_seed,
    }
    t0 = time.perf_counter()
    res = train(build_lrem_config(raw), overwrite=True)
    seconds = time.perf_counter() - t0
    routed = evaluate_stage(build_lrem_config({**raw, "router": {"rule": "overlap"}}), "lrem_rl")
    inf, sft, rl = res["infonce"], res["lrem_sft"], res["lrem_rl"]
    control = _lrem_control(build_lrem_config(raw)) if args.control else {}
    return {
        **control,
        "lrem_recall50": rl["recall@50"],
        "tail_lrem_recall50": rl["tail_recall@50"],
        "lrem_sft_recall50": sft["recall@50"],
        "tail_lrem_sft_recall50": sft["tail_recall@50"],
        "lrem_relevance_at10": rl["relevance@10"],
        "lrem_infonce_recall50": inf["recall@50"],  # the same run's two-tower, same queries
        "tail_lrem_infonce_recall50": inf["tail_recall@50"],
        "lrem_routed_recall50": routed["recall@50"],
        "tail_lrem_routed_recall50": routed["tail_recall@50"],
        "lrem_routed_hard_share": routed["hard_share"],
        "lrem_eval_queries": rl["queries"],
        "lrem_seconds": seconds,
        "lrem_sft_steps": args.lrem_sft_steps,
        "lrem_rl_steps": args.lrem_rl_steps,
        "lrem_reasoning_tokens": args.lrem_tokens,
        "lrem_seed": args.lrem_seed,
    }


def _lrem_control(cfg: Any) -> dict:
    """The RL stage from the same SFT model with every reward 0 (no advantage, so no policy
    gradient): what its InfoNCE and KL terms do alone over the same steps and samples."""
    import torch

    from recis.retrieval_rl.evaluate import evaluate
    from recis.retrieval_rl.lrem_pipeline import setup
    from recis.retrieval_rl.lrem_train import LREMRLTrainer
    from recis.retrieval_rl.trainer import load

    class NoReward(LREMRLTrainer):
        def rewards(self, emb: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
            return torch.zeros(len(emb), device=emb.device)

    torch.manual_seed(cfg.seed)
    data, scorer, model = setup(cfg, train=False)
    load(Path(cfg.run_dir) / "lrem_sft" / "model", model.tower, None)
    trainer = NoReward(model, model.tower.frozen_copy(), data, cfg.rl, cfg.seed + 3)
    while trainer.step_count < cfg.rl.steps:
        trainer.step()
    got = evaluate(model, data, cfg.eval, scorer)
    return {
        "control_lrem_recall50": got["recall@50"],
        "control_tail_lrem_recall50": got["tail_recall@50"],
    }


def _gemm_rate(b: int, n: int, d: int) -> float:
    """FLOP/s of a square-ish fp32 product on this machine (median of 5)."""
    a, m = torch.randn(1024, 1024), torch.randn(1024, 1024)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        a @ m
        times.append(time.perf_counter() - t)
    return 2 * 1024**3 / statistics.median(times)


def step_cost(steps: int, refresh: int) -> dict:
    from recis.retrieval_rl.config import GRPOConfig, IndexConfig, RewardWeights
    from recis.retrieval_rl.encoder import TextDualEncoder, TokenizedTexts
    from recis.retrieval_rl.grpo import infonce_loss
    from recis.retrieval_rl.rewards import ClickReward, WeightedReward
    from recis.retrieval_rl.trainer import RetrievalGRPOTrainer

    n, d, k, b = 100_000, 64, 32, 256
    rng = np.random.default_rng(0)
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyz0123456789"))
    items = ["".join(rng.choice(alphabet, 16)) for _ in range(n)]
    queries = [t[:8] for t in items[:20_000]]
    torch.manual_seed(0)
    qt, it = TokenizedTexts.build(queries, 1 << 16), TokenizedTexts.build(items, 1 << 16)
    model = TextDualEncoder(qt, it, 1 << 16, 64, d)
    ref = TextDualEncoder(qt, it, 1 << 16, 64, d)
    ref.load_state_dict(model.state_dict())
    positives = [np.array([q]) for q in range(len(queries))]
    cfg = GRPOConfig(
        batch_size=b,
        k=k,
        index=IndexConfig(kind="exact", refresh_every=refresh),
        rewards=RewardWeights(),
    )
    trainer = RetrievalGRPOTrainer(
        model, ref, WeightedReward([(ClickReward(positives), 1.0)]), cfg, 0.05
    )
    nce_opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        q = torch.from_numpy(rng.choice(len(queries), b, replace=False))
        return q, q.clone()

    def nce_step() -> float:
        q, i = batch()
        t = time.perf_counter()
        loss = infonce_loss(model, q, i, 0.05)
        nce_opt.zero_grad()
        loss.backward()
        nce_opt.step()
        return time.perf_counter() - t

    def grpo_steps() -> tuple[float, float]:
        """``refresh`` GRPO steps (one index rebuild among them): mean step and search time."""
        s0 = trainer.search_seconds
        t = time.perf_counter()
        for _ in range(refresh):
            trainer.step(*batch())
        return (time.perf_counter() - t) / refresh, (trainer.search_seconds - s0) / refresh

    nce_step()
    grpo_steps()  # warm-up
    nce, grpo, search, loads = [], [], [], []
    for _ in range(steps):  # alternate the two sides
        nce.append(nce_step())
        g, s = grpo_steps()
        grpo.append(g)
        search.append(s)
        loads.append(os.getloadavg()[0])
    # the search's matrix product alone: [B, D] x [D, N]
    pool = model.encode_pool()
    u = torch.nn.functional.normalize(torch.randn(b, d), dim=-1)
    mm = []
    for _ in range(5):
        t = time.perf_counter()
        u @ pool.T
        mm.append(time.perf_counter() - t)
    ratios = [g / c for g, c in zip(grpo, nce)]
    rate = _gemm_rate(b, n, d)
    flops = 2 * b * n * d
    return {
        "grpo_step_time_ratio": statistics.median(grpo) / statistics.median(nce),
        "grpo_step_time_ratio_min": min(ratios),
        "grpo_step_time_ratio_max": max(ratios),
        "infonce_step_s": statistics.median(nce),
        "grpo_step_s": statistics.median(grpo),
        "search_share": statistics.median(search) / statistics.median(grpo),
        "search_matmul_s": statistics.median(mm),
        "search_matmul_flop_limit_s": flops / rate,
        "search_matmul_vs_flop_limit": statistics.median(mm) / (flops / rate),
        "gemm_gflops": rate / 1e9,
        "refresh_every": refresh,
        "timing_rounds": steps,
        "loadavg_1min": [round(x, 1) for x in loads],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_retrieval_rl")
    p.add_argument("--infonce-steps", type=int, default=1200)
    p.add_argument("--grpo-steps", type=int, default=50)
    p.add_argument("--eval-queries", type=int, default=0, help="0: every eval query")
    p.add_argument("--timing-rounds", type=int, default=5)
    p.add_argument("--refresh", type=int, default=10)
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--skip-timing", action="store_true")
    p.add_argument(
        "--control",
        action="store_true",
        help="also InfoNCE alone for the GRPO steps; with --lrem, the LREM RL stage with no reward",
    )
    p.add_argument("--grpo-lr", type=float, default=3e-4)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--exclusivity", type=float, default=0.1, help="exclusivity reward weight")
    p.add_argument(
        "--holdout",
        action="store_true",
        help="dev rows only, 20%% of dev queries held out as eval (choose settings here)",
    )
    p.add_argument("--name", default="qbqtc", help="run directory under --work")
    p.add_argument("--init-from", default=None, help="a run directory whose InfoNCE stage to reuse")
    p.add_argument("--lrem", action="store_true", help="also LREM (tiny scratch LM) on qbqtc")
    p.add_argument("--lrem-sft-steps", type=int, default=300)
    p.add_argument("--lrem-rl-steps", type=int, default=40)
    p.add_argument("--lrem-tokens", type=int, default=8, help="reasoning tokens at most (N)")
    p.add_argument("--lrem-seed", type=int, default=0)
    p.add_argument("--synth", action="store_true", help="also benchmarks/retrieval_synth.py")
    args = p.parse_args()
    out: dict = {"threads": torch.get_num_threads()}
    if not args.skip_quality:
        if not (args.data / "qbqtc" / "pairs.parquet").is_file():
            out["quality_skipped"] = f"{args.data}/qbqtc/pairs.parquet absent"
        else:
            out.update(
                quality(
                    args.data,
                    args.work,
                    args.infonce_steps,
                    args.grpo_steps,
                    args.eval_queries,
                    args,
                )
            )
            print({k: out[k] for k in ("infonce_recall50", "grpo_recall50")}, flush=True)
    if args.lrem:
        if not (args.data / "qbqtc" / "pairs.parquet").is_file():
            out["lrem_skipped"] = f"{args.data}/qbqtc/pairs.parquet absent"
        else:
            out.update(lrem(args.data, args.work, args.eval_queries, args))
            print({k: out[k] for k in ("lrem_infonce_recall50", "lrem_recall50")}, flush=True)
    if args.synth:  # query-rewrite synthesis (its own defaults); its baseline keys prefixed
        import retrieval_synth

        got = retrieval_synth.run(retrieval_synth.parser().parse_args(["--data", str(args.data)]))
        out.update({k if "synth" in k else f"synth_bench_{k}": v for k, v in got.items()})
    if not args.skip_timing:
        out.update(step_cost(args.timing_rounds, args.refresh))
        print(f"grpo step / infonce step: {out['grpo_step_time_ratio']:.2f}x")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
