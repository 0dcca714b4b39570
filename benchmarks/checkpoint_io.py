"""Checkpoint cost: recis's format (safetensors + JSON + sha256 manifest, fsynced, verified on
load) against a pickle checkpoint (torch.save + fsync, torch.load(weights_only=True)).

    python benchmarks/checkpoint_io.py [--mib 256] [--repeat 3]

Prints the best of ``--repeat`` times for each and the ratios; the last line is one JSON
object. The state is ``--mib`` MiB of float32 tensors in 4 MiB pieces (a model's tables).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from recis.train.checkpoint import load_checkpoint, save_checkpoint


def best_of(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=256)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(0)
    pieces = max(1, args.mib // 4)
    state = {"model": {f"t{i}": torch.randn(1 << 20) for i in range(pieces)}, "step": 1}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as tmp:
        d = Path(tmp)

        def pickle_save() -> None:
            with open(d / "state.pt", "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())

        out = {
            "mib": pieces * 4,
            "pickle_save_s": best_of(pickle_save, args.repeat),
            "pickle_load_s": best_of(
                lambda: torch.load(d / "state.pt", weights_only=True), args.repeat
            ),
            "recis_save_s": best_of(
                lambda: save_checkpoint(d / "ck", state, {"step": 1}), args.repeat
            ),
            "recis_load_s": best_of(lambda: load_checkpoint(d / "ck"), args.repeat),
        }
    out["save_ratio"] = out["recis_save_s"] / out["pickle_save_s"]
    out["load_ratio"] = out["recis_load_s"] / out["pickle_load_s"]
    for k, v in out.items():
        print(f"{k:>14}  {v:.3f}" if isinstance(v, float) else f"{k:>14}  {v}")
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
