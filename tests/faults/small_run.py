"""`recis train` arguments for a small synthetic run, shared by the fault tests."""

from __future__ import annotations

from pathlib import Path


def small_run_args(run: Path, data: Path, *extra: str) -> list[str]:
    """``--set`` arguments: 3,000 synthetic rows, batch 256, one thread, 20 steps, no
    progress bar or TensorBoard; an ``extra`` ``key=value`` replaces the default of its key
    (a key may be given once only)."""
    small = [
        f"run_dir={run}",
        f"data.path={data}",
        "data.synthetic.num_train=3000",
        "data.synthetic.num_eval=1000",
        "data.synthetic.files=1",
        "data.batch_size=256",
        "threads=1",
        "train.progress=false",
        "train.tensorboard=false",
        "train.max_steps=20",
    ]
    given = {e.split("=", 1)[0] for e in extra}
    small = [s for s in small if s.split("=", 1)[0] not in given] + list(extra)
    return [a for s in small for a in ("--set", s)]
