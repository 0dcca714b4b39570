"""Export parity, INT8 tables and serving latency: DLRM, two-tower, DeepBoW and a relevance
LLM (issue 21).

    .venv/bin/python benchmarks/serving.py [--work runs/bench_serving] [--run RUN_DIR]
        [--train-rows 200000] [--steps 200] [--requests 200] [--only PARTS]
        [--tt-run DIR] [--tt-rows 20000] [--tt-steps 100] [--db-run DIR] [--db-rows 10000]
        [--llm-run DIR] [--llm-rows 2000] [--llm-steps 100]

1. A run of examples/dlrm_synthetic.yaml (scaled: ``--train-rows`` synthetic rows, 20,000
   eval rows, ``--steps`` steps; or ``--run`` an existing run directory) exported in each
   format: the largest |exported - eval| score over the eval rows
   (``export_parity_max_abs_diff``, the max over formats), then with INT8 tables: the AUC
   change on the same rows (``int8_auc_delta``) and the size of the table file against the
   fp32 one (``int8_size_ratio``; the ids are in both).
2. Eager model forward vs exported (table lookup + torch.export graph) on the same eval
   batches of 64 rows, alternating, medians with min/max (``eager_vs_exported_speed``:
   eager time / exported time, > 1: the export is faster).
3. ``recis serve`` as a real process on 127.0.0.1, one client sending ``--requests``
   sequential requests of 1 and of 64 rows: p50 / p99 latency and requests per second.
4. ``two_tower``: examples/two_tower_synthetic.yaml scaled (``--tt-rows``, 2,000 eval rows,
   ``--tt-steps``), exported with its towers split and a flat faiss index over its items:
   the served top-10 against a brute-force ranking with the eval model
   (``two_tower_topk_equal``, the fraction of eval rows with the same 10 ids in order), and
   ``/topk`` latency (``two_tower_serve_*``) for 1 and 64 query rows.
5. ``deepbow``: examples/deepbow_synthetic.yaml scaled (``--db-rows``, ``--db-steps``),
   exported as its relevance graph and term-weight index: |exported - eval| over the eval
   rows, ``/score`` latency for 1 and 64 rows of raw query and title texts
   (``deepbow_serve_*``), ``/topk`` latency (k 10) over the training products by the
   query's bag (``deepbow_topk_serve_*``).

6. ``relevance_llm``: a relevance LLM (``kind: relevance_llm``: a scratch 2-layer Llama with a
   BPE tokenizer, ``--llm-steps`` SFT steps on ``--llm-rows`` qbqtc pairs of
   ``../shared/data``; or ``--llm-run`` an existing run) exported as its decoder and
   level-token head: |exported - ``recis eval``| over the eval pairs
   (``relevance_llm_parity_max_abs_diff``), the full causal LM's scoring forward against the
   exported decoder + head on the same 64 pairs, alternating (``relevance_llm_head_speed``:
   full time / head time), and ``/score`` latency for 1 and 64 pairs of raw texts.

``--only dlrm,two_tower,deepbow,relevance_llm`` picks the parts (default: all).

``os.getloadavg()`` is recorded beside the timings (the machine is shared). The last line is
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def train_run(work: Path, rows: int, steps: int) -> Path:
    return train_example(work, "dlrm_synthetic.yaml", rows, 20000, steps)


def train_example(work: Path, example: str, rows: int, eval_rows: int, steps: int) -> Path:
    from recis.cli import main

    run = work / "run"
    sets = [
        f"run_dir={run}",
        f"data.path={work / 'data'}",
        f"data.synthetic.num_train={rows}",
        f"data.synthetic.num_eval={eval_rows}",
        "data.synthetic.files=2",
        f"train.max_steps={steps}",
        "train.progress=false",
    ]
    args = [a for s in sets for a in ("--set", s)]
    config = str(ROOT / "examples" / example)
    if main(["train", config, *args, "--overwrite"]) != 0:
        raise SystemExit("training failed")
    return run


def parity(run: Path, out: Path) -> tuple[dict[str, Any], Path]:
    from recis.export import ExportOptions, export_run
    from recis.export.parity import eval_parity

    result: dict[str, Any] = {"formats": {}}
    versions = {}
    for fmt in ("export", "torchscript", "onnx"):
        v = export_run(run, out, ExportOptions(fmt=fmt))
        versions[fmt] = v
        result["formats"][fmt] = eval_parity(run, v)["click"]
    result["export_parity_max_abs_diff"] = max(
        r["max_abs_diff"] for r in result["formats"].values()
    )
    v8 = export_run(run, out, ExportOptions(fmt="export", int8=True))
    p8 = eval_parity(run, v8)["click"]
    result["int8"] = p8
    result["int8_auc_delta"] = p8["auc_delta"]
    fp32_size = (versions["export"] / "tables.safetensors").stat().st_size
    result["int8_size_ratio"] = (v8 / "tables.safetensors").stat().st_size / fp32_size
    # the rows alone (codes + fp16 scale and bias against fp32 rows), without the id map
    from safetensors.torch import load_file

    a = load_file(str(versions["export"] / "tables.safetensors"))
    b = load_file(str(v8 / "tables.safetensors"))
    rows32 = sum(t.nbytes for k, t in a.items() if k.endswith(".weights"))
    rows8 = sum(t.nbytes for k, t in b.items() if k.rsplit(".", 1)[1] in ("q", "scale", "bias"))
    result["int8_rows_size_ratio"] = rows8 / rows32
    return result, versions["export"]


def eager_vs_exported(run: Path, version: Path, rounds: int = 30) -> dict[str, Any]:
    from recis.export import ServingModel
    from recis.export.source import load_run

    _, trainer, _, _ = load_run(run)
    model = ServingModel(version)
    assert trainer.eval_data is not None, "the run has no eval data"
    batch = next(iter(trainer.eval_data))
    small = _take(batch, 64)
    eager: list[float] = []
    exported: list[float] = []
    with torch.no_grad():
        for r in range(rounds + 2):
            sides = [("eager", eager), ("exported", exported)]
            for name, times in sides if r % 2 == 0 else sides[::-1]:
                t0 = time.perf_counter()
                for _ in range(20):
                    if name == "eager":
                        trainer.model(small)
                    else:
                        model.score_batch(small)
                if r >= 2:  # two warm-up rounds
                    times.append((time.perf_counter() - t0) / 20)
    e, x = np.median(eager), np.median(exported)
    ratios = np.asarray(eager) / np.asarray(exported)
    return {
        "eager_ms_b64": 1e3 * e,
        "exported_ms_b64": 1e3 * x,
        "eager_vs_exported_speed": float(e / x),
        "speed_min": float(ratios.min()),
        "speed_max": float(ratios.max()),
    }


def _take(batch: Any, n: int) -> Any:
    """The first ``n`` rows of a Batch (its ids, dense values and labels)."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    jt = batch.sparse.to_dict()
    keys = list(jt)
    lengths = torch.cat([jt[k].lengths()[:n] for k in keys])
    values = torch.cat([jt[k].values()[: int(jt[k].lengths()[:n].sum())] for k in keys])
    kjt = KeyedJaggedTensor(keys=keys, values=values, lengths=lengths)
    from recis.io import Batch

    return Batch(
        sparse=kjt, dense=batch.dense[:n], labels={k: v[:n] for k, v in batch.labels.items()}
    )


def _post(url: str, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        r.read()


def _start_server(out: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "recis.cli", "serve", str(out), "--port", str(port)]
    proc = subprocess.Popen(cmd)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(base + "/health", timeout=5).read()
            return proc, base
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise SystemExit("server did not come up") from None
            time.sleep(0.3)


def latency(out: Path, path: str, bodies: dict[int, dict[str, Any]], requests: int) -> dict:
    """``recis serve out``: ``requests`` sequential requests of each body (by batch size)."""
    proc, base = _start_server(out)
    try:
        result: dict[str, Any] = {}
        for b, body in bodies.items():
            for _ in range(10):  # warm-up
                _post(base + path, body)
            lat = []
            t_all = time.perf_counter()
            for _ in range(requests):
                t0 = time.perf_counter()
                _post(base + path, body)
                lat.append(time.perf_counter() - t0)
            total = time.perf_counter() - t_all
            ms = np.asarray(lat) * 1e3
            result[f"batch{b}"] = {
                "serve_p50_ms": float(np.percentile(ms, 50)),
                "serve_p99_ms": float(np.percentile(ms, 99)),
                "serve_qps": requests / total,
                "rows_per_s": requests * b / total,
            }
        return result
    finally:
        proc.terminate()
        proc.wait(30)


def _eval_rows(run: Path, columns: list[str], n: int = 64) -> list[dict[str, Any]]:
    """The first ``n`` eval rows of ``run`` with ``columns`` only (what a request carries)."""
    import pyarrow.parquet as pq

    table = pq.read_table(_eval_dir(run), columns=columns).slice(0, n)
    return table.to_pylist()


def serve_latency(run: Path, out: Path, requests: int) -> dict[str, Any]:
    from recis.export import ServingModel
    from recis.export.publish import read_latest

    model = ServingModel(out / str(read_latest(out)))
    rows = _eval_rows(run, model.columns)
    return latency(out, "/score", {b: {"rows": rows[:b]} for b in (1, 64)}, requests)


def two_tower(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """A scaled two-tower run exported (towers split, flat faiss index over its items):
    served top-10 vs brute force with the eval model, and /topk latency."""
    from recis.export import ExportOptions, export_run
    from recis.export.parity import retrieval_parity
    from recis.export.retrieval import RetrievalModel

    if args.tt_run:
        run = Path(args.tt_run)
    else:
        run = train_example(work, "two_tower_synthetic.yaml", args.tt_rows, 2000, args.tt_steps)
    v = export_run(run, work / "exports", ExportOptions(fmt="export"))
    out: dict[str, Any] = {"parity": retrieval_parity(run, v, k=10)}
    model = RetrievalModel(v)
    out["items"] = model.manifest["index"]["items"]
    rows = _eval_rows(run, model.towers["query"].schema.columns)
    bodies = {b: {"rows": rows[:b], "k": 10} for b in (1, 64)}
    out["serve"] = latency(v.parent, "/topk", bodies, args.requests)
    return out


def deepbow(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """A scaled DeepBoW run exported (one relevance graph): scores vs eval, and /score
    latency for raw query/title texts."""
    from recis.export import ExportOptions, export_run
    from recis.export.parity import eval_parity
    from recis.export.relevance import RelevanceModel

    if args.db_run:
        run = Path(args.db_run)
    else:
        run = train_example(work, "deepbow_synthetic.yaml", args.db_rows, 2000, args.db_steps)
    v = export_run(run, work / "exports", ExportOptions(fmt="export"))
    out: dict[str, Any] = {"parity": eval_parity(run, v)}
    model = RelevanceModel(v)
    rows = _eval_rows(run, model.schema.columns)
    bodies = {b: {"rows": rows[:b]} for b in (1, 64)}
    out["serve"] = latency(v.parent, "/score", bodies, args.requests)
    # /topk through the term-weight index of the training products, k 10
    out["products"] = model.manifest["term_index"]["products"]
    queries = _eval_rows(run, model.query_schema.columns)
    bodies = {b: {"rows": queries[:b], "k": 10} for b in (1, 64)}
    out["topk"] = latency(v.parent, "/topk", bodies, args.requests)
    return out


def relevance_llm(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """A relevance-LLM run exported as decoder + level-token head: scores vs ``recis eval``,
    the head's forward vs the full LM's, and /score latency."""
    import pyarrow.parquet as pq

    from recis.cli import main as recis
    from recis.export import ExportOptions, RelevanceLLMModel, export_run
    from recis.llm.model import load_model, load_tokenizer
    from recis.llm.scoring import level_probs

    run = Path(args.llm_run) if args.llm_run else _train_llm(work, args.llm_rows, args.llm_steps)
    if run is None:
        return {"skipped": "no ../shared/data/qbqtc"}
    v = export_run(run, work / "exports", ExportOptions(fmt="export"))
    if not (run / "scores-sft.parquet").is_file():
        assert recis(["eval", str(run / "config.yaml"), "--checkpoint", "sft"]) == 0
    want = pq.read_table(run / "scores-sft.parquet").to_pydict()
    model = RelevanceLLMModel(v)
    cols = model.columns
    rows = [{cols["query"]: q, cols["title"]: t} for q, t in zip(want["query"], want["title"])]
    got = model.score_rows(rows)["relevance"]
    out: dict[str, Any] = {"pairs": len(rows)}
    out["parity_max_abs_diff"] = float(np.abs(got - np.asarray(want["score"])).max())
    full = load_model(run / "stages" / "sft" / "model")
    tok = load_tokenizer(run / "stages" / "sft" / "model")
    batch = model.rows_batch(rows[:64])
    t_full, t_head = [], []
    with torch.no_grad():
        for _ in range(15):  # alternating, one thread as served
            t0 = time.perf_counter()
            level_probs(full, tok, model.task, batch.examples, 64)
            t_full.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            model.score_batch(batch)
            t_head.append(time.perf_counter() - t0)
    out["head_speed"] = float(np.median(t_full) / np.median(t_head))
    out["full_ms"], out["head_ms"] = 1e3 * np.median(t_full), 1e3 * np.median(t_head)
    bodies = {b: {"rows": rows[:b]} for b in (1, 64)}
    out["serve"] = latency(v.parent, "/score", bodies, args.requests)
    return out


def _train_llm(work: Path, rows: int, steps: int) -> Path | None:
    """A scratch relevance LLM trained by SFT on ``rows`` qbqtc pairs (None: no data)."""
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from recis.cli import main as recis

    src = ROOT.parent / "shared" / "data" / "qbqtc" / "pairs.parquet"
    if not src.is_file():
        return None
    pairs = pq.read_table(src, columns=["query", "title", "label"]).to_pylist()
    pairs = random.Random(0).sample(pairs, min(len(pairs), rows + 500))
    pq.write_table(pa.Table.from_pylist(pairs[:rows]), work / "train.parquet")
    pq.write_table(pa.Table.from_pylist(pairs[rows:]), work / "eval.parquet")
    run = work / "run"
    cfg = {
        "kind": "relevance_llm",
        "run_dir": str(run),
        "model": {"scratch": {"hidden_size": 64, "layers": 2, "heads": 4, "vocab_size": 2000}},
        "data": {"train": str(work / "train.parquet"), "eval": str(work / "eval.parquet")},
        "levels": {"names": ["0", "1", "2"], "relevant_from": 2},
        "prompt": {"rationale": False},
        "stages": [{"kind": "sft", "max_steps": steps, "batch_size": 16, "learning_rate": 1e-3}],
    }
    (work / "llm.yaml").write_text(yaml.safe_dump(cfg))
    assert recis(["train", str(work / "llm.yaml"), "--overwrite"]) == 0
    return run


def _keys(prefix: str, serve: dict[str, Any]) -> dict[str, Any]:
    return {
        f"{prefix}{k}": {b: serve[f"batch{b}"][k] for b in (1, 64)}
        for k in ("serve_p50_ms", "serve_p99_ms", "serve_qps")
    }


def _eval_dir(run: Path) -> Path:
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    return Path(cfg["data"]["path"]) / "eval"


def dlrm(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Parity in each format, INT8 tables, eager vs exported speed and /score latency."""
    from recis.export.publish import set_latest

    run = Path(args.run) if args.run else train_run(work, args.train_rows, args.steps)
    out = work / "exports"
    par, fp32_version = parity(run, out)
    speed = eager_vs_exported(run, fp32_version)
    set_latest(out, fp32_version.name)  # serve the fp32 torch.export version
    return {"parity": par, "speed": speed, "serve": serve_latency(run, out, args.requests)}


def _summary(found: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "dlrm" in found:
        d = found["dlrm"]
        par = d["parity"]
        out.update({k: par[k] for k in ("export_parity_max_abs_diff", "int8_auc_delta")})
        out["int8_size_ratio"] = par["int8_size_ratio"]
        out["int8_rows_size_ratio"] = par["int8_rows_size_ratio"]
        out.update(_keys("", d["serve"]))
        out["eager_vs_exported_speed"] = d["speed"]["eager_vs_exported_speed"]
    if "two_tower" in found:
        t = found["two_tower"]
        out["two_tower_topk_equal"] = t["parity"]["topk_equal"]
        out["two_tower_query_max_abs_diff"] = t["parity"]["query_max_abs_diff"]
        out.update(_keys("two_tower_", t["serve"]))
    if "deepbow" in found:
        db = found["deepbow"]
        out["deepbow_parity_max_abs_diff"] = max(r["max_abs_diff"] for r in db["parity"].values())
        out.update(_keys("deepbow_", db["serve"]))
        out.update(_keys("deepbow_topk_", db["topk"]))
    if "serve" in found.get("relevance_llm", {}):
        r = found["relevance_llm"]
        out["relevance_llm_parity_max_abs_diff"] = r["parity_max_abs_diff"]
        out["relevance_llm_head_speed"] = r["head_speed"]
        out.update(_keys("relevance_llm_", r["serve"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench_serving"))
    ap.add_argument(
        "--only", default="dlrm,two_tower,deepbow,relevance_llm", help="comma-separated parts"
    )
    ap.add_argument("--run", help="an existing DLRM run directory (skips training)")
    ap.add_argument("--train-rows", type=int, default=200_000)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--tt-run", help="an existing two-tower run directory")
    ap.add_argument("--tt-rows", type=int, default=20_000)
    ap.add_argument("--tt-steps", type=int, default=100)
    ap.add_argument("--db-run", help="an existing DeepBoW run directory")
    ap.add_argument("--db-rows", type=int, default=10_000)
    ap.add_argument("--db-steps", type=int, default=100)
    ap.add_argument("--llm-run", help="an existing relevance-LLM run directory")
    ap.add_argument("--llm-rows", type=int, default=2000)
    ap.add_argument("--llm-steps", type=int, default=100)
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    work = Path(args.work)
    parts = {"dlrm": dlrm, "two_tower": two_tower, "deepbow": deepbow}
    parts["relevance_llm"] = relevance_llm
    found: dict[str, Any] = {}
    load: dict[str, Any] = {}
    t0 = time.time()
    for name in args.only.split(","):
        folder = work if name == "dlrm" else work / name
        folder.mkdir(parents=True, exist_ok=True)
        load[f"loadavg_before_{name}"] = os.getloadavg()
        found[name] = parts[name](folder, args)
        load[f"loadavg_after_{name}"] = os.getloadavg()
    print(json.dumps(found, indent=1, default=str))
    print(f"seconds: {time.time() - t0:.0f}, load: {load}")
    summary = _summary(found)
    if "eager_vs_exported_speed" in summary:
        speed = summary["eager_vs_exported_speed"]
        print(f"exported/eager speed ratio (eager time / exported time): {speed:.2f}")
    print(json.dumps({**summary, **load}))


if __name__ == "__main__":
    main()
