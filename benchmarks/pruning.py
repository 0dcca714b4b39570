"""SlimGPT structured pruning on real data: quality vs size vs latency (issue 20).

Two models trained on ../shared/data (``recis train``, configs derived from the recipes,
trained to the recipe's own epochs and early stop unless ``--epochs``):

* ``text``: the dense relevance tower (``DenseRelevance``) with a small BERT encoder built
  from config (hidden 64, 2 layers, 8 heads, FFN 256) on qbqtc; metric ``very_relevant/auc``;
* ``hhft``: HHFT (the MovieLens recipe as it is, with 8 heads, FFN 4x and 2 heterogeneous
  layers + its Hiformer layer with the full key/value map and one token per dense
  statistic, as measured since session 7) on
  MovieLens (protocol 2 click log); metric ``like/auc``.

Each is pruned at each ratio with SlimGPT (OBS selection + update, uniform schedule), the
magnitude baseline and OBS selection without update, ``--samples`` calibration rows from
the training file, no fine-tuning; with ``--finetune-steps N`` also SlimGPT followed by N
steps of the run's trainer (``auc_slimgpt_finetuned``). AUC on the test split
(``auc_dense``, ``auc_slimgpt``, ``auc_magnitude``, ``auc_obs_select``) and how far each
pruned model's logits are from the dense model's on the first 4,096 test rows
(``logit_rmse_{method}``, root mean square difference), ``params_ratio``
(dense parameters of the pruned layers, transformer layers and HHFT's task heads, pruned /
original; ``model_params_ratio``: whole model), ``latency_ratio`` (pruned / original
forward of one batch of 256 test rows, CPU, ``--threads`` torch threads, ``--latency-runs``
alternating runs, ratio of the medians; the median of ``--latency-repeats`` such ratios,
each in ``latency_ratio_repeats``; ``latency_ratio_cpu``: of the CPU times;
``latency_load``: load average before/after; ``layer_{name}_ms`` / ``layer_{name}_ratio``:
each pruned layer alone, original median and pruned / original; HHFT's ``tokens_ms``: its
block tokens alone, the part no pruning touches). Also the wall time of pruning a random
~100M-parameter LLaMA-style model (``--big``; calibration 16 x 128 random tokens).

    python benchmarks/pruning.py [--work /tmp/recis_pruning] [--ratios 0.3 0.5] [--big]

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from _timing import alternate, load, ratio

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

BERT = {
    "model_type": "bert",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "intermediate_size": 256,
    "vocab_size": 32768,
    "max_position_embeddings": 64,
}


def _recipe(path: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "examples" / "recipes" / path).read_text())


def configs(work: Path, epochs: int | None = None) -> dict[str, dict[str, Any]]:
    """The two run configs (recipes with the changes named in the module doc); ``epochs``
    None keeps each recipe's epochs, schedule and early stopping (trained to its stop)."""
    hhft = _recipe("movielens_ctr/hhft.yaml")
    ml = work / "data" / "movielens_ctr"
    hhft["run_dir"] = str(work / "runs" / "hhft")
    hhft["data"].update(train=str(ml / "train.parquet"), eval=str(ml / "valid.parquet"))
    hhft["model"].update(
        num_heads=8, ffn_mult=4, hetero_layers=2, kv_rank=None, dense_tokens="feature"
    )
    if epochs is not None:
        hhft["train"].update(epochs=epochs)
        hhft["train"]["schedule"]["total_steps"] = 142 * epochs
    text = _recipe("qbqtc_relevance/dense_relevance.yaml")
    qb = work / "data" / "qbqtc_relevance"
    text["run_dir"] = str(work / "runs" / "text")
    text["data"].update(train=str(qb / "train.parquet"), eval=str(qb / "valid.parquet"))
    for feature in text["data"]["schema"]["text"]:
        feature["max_length"] = 32
    text["model"].update(llm={"config": dict(BERT), "pooling": "mean"}, max_len=32)
    if epochs is not None:
        text["train"].update(epochs=epochs)
        text["train"]["schedule"]["total_steps"] = 66 * epochs
    return {"hhft": hhft, "text": text}


TEST = {"hhft": "movielens_ctr", "text": "qbqtc_relevance"}
METRIC = {"hhft": "like/auc", "text": "very_relevant/auc"}


def prepare(work: Path) -> None:
    """The recipes' prepare steps into ``work/data`` (skipped when present)."""
    steps = {
        "movielens_ctr": DATA / "ml_latest_small",
        "qbqtc_relevance": DATA / "qbqtc",
    }
    for name, src in steps.items():
        out = work / "data" / name
        if not (out / "test.parquet").exists():
            script = ROOT / "examples" / "recipes" / name / "prepare.py"
            subprocess.run([sys.executable, str(script), str(src), str(out)], check=True)


def train(work: Path, name: str, cfg: dict[str, Any]) -> Path:
    """``recis train`` of one config unless its run already has a final checkpoint."""
    run = Path(cfg["run_dir"])
    if (run / "checkpoints" / "final").exists():
        return run
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "recis.cli", "train", str(path), "--overwrite"]
    subprocess.run(cmd, check=True, cwd=ROOT)
    return run


def _auc(cfg_path: Path, checkpoint: Path, test: Path, metric: str) -> float:
    from recis.config import load_config
    from recis.distributed import run as runner  # the one runner (1 or N processes)

    cfg = load_config(cfg_path, [f"data.eval={test}"])
    return float(runner.evaluate(cfg, checkpoint)[metric])


def _latency(
    a: torch.nn.Module, b: torch.nn.Module, batch: Any, runs: int, repeats: int = 1
) -> dict[str, Any]:
    """Forward of one batch, original ``a`` and pruned ``b`` alternating (who goes first
    alternates too, :func:`_timing.alternate`): median wall and CPU ms of each, the ratio of
    the medians (wall, with the min/max per-round ratio, and CPU), the load before/after.
    With ``repeats`` > 1 the whole measurement runs that many times and every figure is the
    median over the repeats (``latency_ratio_repeats``: each repeat's ratio): the shared
    machine's speed drifts within a repeat, by up to 1.5x between repeats."""
    load_before = load()
    each: list[dict[str, Any]] = []
    with torch.no_grad():
        sides = {"original": lambda _: a(batch), "pruned": lambda _: b(batch)}
        for _ in range(repeats):
            out = alternate(sides, runs, warmup=2)
            each.append(
                {
                    **out["original"].stats("latency"),
                    **out["pruned"].stats("latency_pruned"),
                    **ratio(out["pruned"], out["original"], "latency_ratio"),
                }
            )
    med = {key: float(np.median([e[key] for e in each])) for key in each[0]}
    med["latency_ratio_min"] = min(e["latency_ratio_min"] for e in each)
    med["latency_ratio_max"] = max(e["latency_ratio_max"] for e in each)
    return {
        **med,
        "latency_ratio_repeats": [e["latency_ratio"] for e in each],
        "latency_load": [load_before, load()],
    }


def _caller(module: torch.nn.Module, args: Any, kwargs: Any) -> Any:
    return lambda _: module(*args, **kwargs)


def _layer_latency(
    a: torch.nn.Module, b: torch.nn.Module, batch: Any, runs: int
) -> dict[str, float]:
    """Each pruned layer alone, original (in ``a``) and pruned (in ``b``) alternating on the
    inputs the layer gets in ``a``'s forward of ``batch``: ``layer_{name}_ms`` (median wall
    ms of the original layer) and ``layer_{name}_ratio`` (pruned / original, medians)."""
    from recis.models.structure import prunable_layers

    names = [name for name, _ in prunable_layers(a)]
    mods_a, mods_b = dict(a.named_modules()), dict(b.named_modules())
    calls: dict[str, tuple[Any, Any]] = {}

    def catch(name: str) -> Any:
        return lambda _m, args, kwargs: calls.setdefault(name, (args, kwargs))

    hooks = [mods_a[n].register_forward_pre_hook(catch(n), with_kwargs=True) for n in names]
    with torch.no_grad():
        a(batch)
    for hook in hooks:
        hook.remove()
    out: dict[str, float] = {}
    for name in names:
        args, kwargs = calls[name]
        sides = {
            "original": _caller(mods_a[name], args, kwargs),
            "pruned": _caller(mods_b[name], args, kwargs),
        }
        with torch.no_grad():
            runs_ = alternate(sides, runs, warmup=2)
        out[f"layer_{name}_ms"] = runs_["original"].stats("t")["t_ms"]
        out[f"layer_{name}_ratio"] = ratio(runs_["pruned"], runs_["original"], "r")["r"]
    return out


def _tokens_latency(a: torch.nn.Module, batch: Any, runs: int) -> dict[str, float]:
    """HHFT's block tokens alone (embeddings, target attention, block projections: what
    pruning does not touch), original model: ``tokens_ms`` (median wall, ``runs`` runs)."""
    from recis.models.hhft import HHFT

    if not isinstance(a, HHFT):
        return {}
    with torch.no_grad():
        out = alternate({"tokens": lambda _: a.tokens(batch, a.dense_norm(batch.dense))}, runs)
    return {"tokens_ms": out["tokens"].stats("t")["t_ms"]}


def _logits(model: torch.nn.Module, rows: list[Any]) -> torch.Tensor:
    """Every task's logits of ``model`` on the batches ``rows``, flattened."""
    with torch.no_grad():
        return torch.cat([torch.cat([v.reshape(-1) for v in model(b).values()]) for b in rows])


def _layer_params(model: torch.nn.Module) -> int:
    from recis.models.structure import prunable_layers

    names = {name for name, _ in prunable_layers(model)}
    return sum(
        p.numel() for name, m in model.named_modules() if name in names for p in m.parameters()
    )


def evaluate_model(name: str, run: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """AUC, sizes and latency of ``run`` and its pruned versions (keys ``{name}_...``)."""
    from recis.config import load_config
    from recis.prune.finetune import FinetuneOptions
    from recis.prune.run import calibration_batches, load_run_model, prune_run, source_checkpoint
    from recis.prune.slimgpt import PruneOptions

    test = work / "data" / TEST[name] / "test.parquet"
    metric = METRIC[name]
    cfg = load_config(run / "config.yaml", [f"data.eval={test}"])
    source = source_checkpoint(run)
    out: dict[str, Any] = {f"{name}_auc_dense": _auc(run / "config.yaml", source, test, metric)}
    dense, _ = load_run_model(cfg, source)
    dense.eval()
    batch = calibration_batches(cfg, [str(test)], 256)[0]
    # how far each pruned model's logits move from the dense model's (what OBS minimises,
    # layer by layer); AUC can stay flat while they move
    rows = calibration_batches(cfg, [str(test)], 4096)
    dense_logits = _logits(dense, rows)
    methods = ["slimgpt", "magnitude", "obs-select"] + (["finetune"] if args.finetune_steps else [])
    for share in args.ratios:
        key = f"{name}_{int(round(share * 100))}"
        for method in methods:
            pruned_dir = work / "pruned" / f"{key}_{method}"
            if not (pruned_dir / "prune.json").exists():
                tune = FinetuneOptions(args.finetune_steps) if method == "finetune" else None
                chosen = "slimgpt" if method == "finetune" else method
                options = PruneOptions(share, method=chosen)  # type: ignore[arg-type]
                prune_run(run, pruned_dir, options, samples=args.samples, finetune=tune)
            record = json.loads((pruned_dir / "prune.json").read_text())
            ckpt = pruned_dir / "checkpoints" / "final"
            auc = _auc(pruned_dir / "config.yaml", ckpt, test, metric)
            label = "slimgpt_finetuned" if method == "finetune" else method.replace("-", "_")
            out[f"{key}_auc_{label}"] = auc
            pcfg = load_config(pruned_dir / "config.yaml", [f"data.eval={test}"])
            pruned, _ = load_run_model(pcfg, ckpt)
            pruned.eval()
            moved = _logits(pruned, rows) - dense_logits
            out[f"{key}_logit_rmse_{label}"] = float(moved.pow(2).mean().sqrt())
            if method == "slimgpt":
                out[f"{key}_prune_seconds"] = record["seconds"]
                out[f"{key}_params_ratio"] = _layer_params(pruned) / _layer_params(dense)
                out[f"{key}_model_params_ratio"] = record["params_ratio"]
                lat = _latency(dense, pruned, batch, args.latency_runs, args.latency_repeats)
                lat.update(_layer_latency(dense, pruned, batch, args.latency_runs))
                lat.update(_tokens_latency(dense, batch, args.latency_runs))
                out.update({f"{key}_{k}": v for k, v in lat.items()})
        out[f"{key}_auc_kept"] = out[f"{key}_auc_slimgpt"] / out[f"{name}_auc_dense"]
        print(json.dumps({k: v for k, v in out.items() if k.startswith(key)}), flush=True)
    out[f"{name}_goals"] = goals(out, name, args.ratios)
    return out


def goals(out: dict[str, Any], name: str, ratios: list[float]) -> dict[str, bool]:
    """Issue 20's goals for one model: SlimGPT above magnitude at every ratio; at 30%,
    >= 99% of the dense AUC without fine-tuning and latency ratio <= 0.8."""
    flags: dict[str, bool] = {}
    for share in ratios:
        key = f"{name}_{int(round(share * 100))}"
        flags[f"{key}_slimgpt_beats_magnitude"] = (
            out[f"{key}_auc_slimgpt"] > out[f"{key}_auc_magnitude"]
        )
        if abs(share - 0.3) < 1e-9:
            flags[f"{key}_kept_99"] = out[f"{key}_auc_kept"] >= 0.99
            flags[f"{key}_latency_le_0.8"] = out[f"{key}_latency_ratio"] <= 0.8
    return flags


def time_big() -> dict[str, Any]:
    """Wall time of SlimGPT on a random LLaMA-style model of ~100M parameters (ratio 0.3)."""
    import transformers

    from recis.prune.slimgpt import PruneOptions, count_params, prune_model

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=32000,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        max_position_embeddings=256,
    )
    model = transformers.LlamaModel(cfg).eval()
    g = torch.Generator().manual_seed(1)
    batches = [{"input_ids": torch.randint(0, 32000, (4, 128), generator=g)} for _ in range(4)]
    params = count_params(model)
    cpu = time.process_time()
    report = prune_model(
        model,
        PruneOptions(0.3, early_stop=True),
        batches,
        lambda b: model(**b),
    )
    return {
        "big_params": params,
        "big_params_after": report.params_after,
        "big_prune_seconds": report.seconds,
        "big_prune_cpu_seconds": time.process_time() - cpu,
        "big_threads": torch.get_num_threads(),
        "big_calibration_tokens": 16 * 128,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/recis_pruning")
    p.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.5])
    p.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--models", nargs="+", default=["text", "hhft"])
    p.add_argument("--train-only", action="store_true")
    p.add_argument("--no-train", action="store_true", help="use the runs' newest checkpoints")
    p.add_argument("--big-only", action="store_true", help="only time the ~100M model")
    p.add_argument("--latency-runs", type=int, default=30)
    p.add_argument(
        "--latency-repeats", type=int, default=5, help="median of this many latency ratios"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (latency, pruning)")
    p.add_argument(
        "--finetune-steps", type=int, default=0, help="also SlimGPT + recovery fine-tune"
    )
    p.add_argument("--big", action="store_true", help="also time pruning a ~100M model")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    # one pool size for everything here: the evaluations and fine-tunes size theirs from
    # OMP_NUM_THREADS when it is set (recis.train.runner.set_threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    if args.big_only:
        print(
            json.dumps(
                {"load_before": os.getloadavg()[0], **time_big(), "load_after": os.getloadavg()[0]}
            )
        )
        return
    prepare(work)
    cfgs = configs(work, args.epochs)
    if args.no_train:
        runs = {name: Path(cfgs[name]["run_dir"]) for name in args.models}
    else:
        runs = {name: train(work, name, cfgs[name]) for name in args.models}
    if args.train_only:
        return
    result: dict[str, Any] = {"load_before": os.getloadavg()[0]}
    for name, run in runs.items():
        result.update(evaluate_model(name, run, work, args))
    if args.big:
        result.update(time_big())
    result["load_after"] = os.getloadavg()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
