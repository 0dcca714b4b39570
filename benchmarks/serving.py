"""Export parity, INT8 tables and serving latency of the default DLRM example (issue 21).

    .venv/bin/python benchmarks/serving.py [--work runs/bench_serving] [--run RUN_DIR]
        [--train-rows 200000] [--steps 200] [--requests 200]

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
    from recis.cli import main

    run = work / "run"
    sets = [
        f"run_dir={run}",
        f"data.path={work / 'data'}",
        f"data.synthetic.num_train={rows}",
        "data.synthetic.num_eval=20000",
        "data.synthetic.files=2",
        f"train.max_steps={steps}",
        "train.progress=false",
    ]
    args = [a for s in sets for a in ("--set", s)]
    config = str(ROOT / "examples" / "dlrm_synthetic.yaml")
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


def _post(url: str, rows: list[dict[str, Any]]) -> None:
    data = json.dumps({"rows": rows}).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        r.read()


def serve_latency(run: Path, out: Path, requests: int) -> dict[str, Any]:
    import pyarrow.parquet as pq

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "recis.cli", "serve", str(out), "--port", str(port)]
    proc = subprocess.Popen(cmd)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(base + "/health", timeout=5).read()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("server did not come up") from None
                time.sleep(0.3)
        table = pq.read_table(_eval_dir(run)).slice(0, 64)
        rows = [{k: v for k, v in r.items() if k != "label"} for r in table.to_pylist()]
        result: dict[str, Any] = {}
        for b in (1, 64):
            for _ in range(10):  # warm-up
                _post(base + "/score", rows[:b])
            lat = []
            t_all = time.perf_counter()
            for _ in range(requests):
                t0 = time.perf_counter()
                _post(base + "/score", rows[:b])
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


def _eval_dir(run: Path) -> Path:
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    return Path(cfg["data"]["path"]) / "eval"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench_serving"))
    ap.add_argument("--run", help="an existing run directory (skips training)")
    ap.add_argument("--train-rows", type=int, default=200_000)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    run = Path(args.run) if args.run else train_run(work, args.train_rows, args.steps)
    out = work / "exports"
    load = {"loadavg_before": os.getloadavg()}
    t0 = time.time()
    par, fp32_version = parity(run, out)
    speed = eager_vs_exported(run, fp32_version)
    # serve the fp32 torch.export version: point latest back at it
    from recis.export.publish import set_latest

    set_latest(out, fp32_version.name)
    serve = serve_latency(run, out, args.requests)
    load["loadavg_after"] = os.getloadavg()
    summary = {
        "export_parity_max_abs_diff": par["export_parity_max_abs_diff"],
        "int8_auc_delta": par["int8_auc_delta"],
        "int8_size_ratio": par["int8_size_ratio"],
        "int8_rows_size_ratio": par["int8_rows_size_ratio"],
        "serve_p50_ms": {b: serve[f"batch{b}"]["serve_p50_ms"] for b in (1, 64)},
        "serve_p99_ms": {b: serve[f"batch{b}"]["serve_p99_ms"] for b in (1, 64)},
        "serve_qps": {b: serve[f"batch{b}"]["serve_qps"] for b in (1, 64)},
        "eager_vs_exported_speed": speed["eager_vs_exported_speed"],
    }
    print(json.dumps({"parity": par, "speed": speed, "serve": serve}, indent=1, default=str))
    print(f"seconds: {time.time() - t0:.0f}, load: {load}")
    print(
        f"exported/eager speed ratio (eager time / exported time): {summary['eager_vs_exported_speed']:.2f}"
    )
    print(json.dumps({**summary, **load}))


if __name__ == "__main__":
    main()
