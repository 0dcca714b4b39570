"""A checkpoint writer killed (SIGKILL) at any moment, or out of space, never leaves a
partial checkpoint as the newest: the previous one loads and is the one resumed.

Real processes: the writer is a child killed by SIGKILL at random moments (its file
writes slowed down by random sleeps, so that kills land inside saves, between files,
during renames and deletes), and ``recis train`` run under RLIMIT_FSIZE (SIGXFSZ
ignored, so writes past the limit fail with EFBIG, as a full disk fails with ENOSPC).
"""

from __future__ import annotations

import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from recis.train import CheckpointManager, latest_checkpoint, load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "faults"))
from small_run import small_run_args  # noqa: E402  (the small `recis train` arguments)

sys.path.pop(0)

_WRITER = r"""
import random, sys, time, types
from pathlib import Path
import torch, recis

# recis.train.checkpoint without the rest of recis.train (torchrec): a quicker start
train = types.ModuleType("recis.train")
train.__path__ = [str(Path(recis.__file__).parent / "train")]
sys.modules["recis.train"] = train
import recis.train.checkpoint as ck

real = ck.write_file
def slow(path, data):  # every file write takes a while, so kills land inside saves
    time.sleep(random.uniform(0, 0.02))
    out = real(path, data)
    time.sleep(random.uniform(0, 0.02))
    return out
ck.write_file = slow

mgr = ck.CheckpointManager(sys.argv[1], keep_last=2)
mgr.clean_partial()
latest = mgr.latest()
step = int(latest.name[5:]) if latest else 0
torch.manual_seed(0)
w = torch.randn(128, 64)
print("ready", flush=True)
while True:
    step += 1
    state = {"model": {"w": w + step}, "optimizers": [{"state": {0: {"m": w * step}}}],
             "step": step}
    mgr.save(step, state, {"step": step})
"""


def test_sigkill_during_saves_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoints"
    torch.manual_seed(0)
    w = torch.randn(128, 64)
    rng = random.Random(1)
    state = {"model": {"w": w}, "optimizers": [{"state": {0: {"m": w * 0}}}], "step": 0}
    CheckpointManager(ckpt).save(0, state, {"step": 0})  # the first "previous" checkpoint
    steps, mid_write = [], 0
    for _ in range(5):
        child = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(ckpt)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
            time.sleep(rng.uniform(0.05, 0.6))
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
        assert child.returncode == -signal.SIGKILL
        mid_write += any(p.name.startswith(".tmp-") for p in ckpt.iterdir())
        latest = latest_checkpoint(tmp_path)  # the newest numbered one: it must load
        state, meta = load_checkpoint(latest)
        step = int(latest.name[5:])
        assert state["step"] == meta["step"] == step
        assert torch.equal(state["model"]["w"], w + step)
        assert torch.equal(state["optimizers"][0]["state"][0]["m"], w * step)
        for older in CheckpointManager(ckpt).checkpoints():
            load_checkpoint(older)  # every visible checkpoint is whole
        steps.append(step)
    assert steps == sorted(steps) and steps[-1] > steps[0]  # each run went on from the last
    assert mid_write >= 1  # at least one kill landed inside a save


def _small_run_args(tmp_path: Path) -> list[str]:
    return small_run_args(
        tmp_path / "run", tmp_path / "data", "train.checkpoint_every=5", "train.max_steps=15"
    )


# `recis train`, whose file size limit drops right after its first checkpoint: to below a
# checkpoint file's size ("checkpoint"), or to just above metrics.jsonl's ("metrics")
_LIMITED = r"""
import os, resource, signal, sys
from pathlib import Path
from recis.train import trainer as T

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
what, run = sys.argv[1], Path(sys.argv[2])
real = T.Trainer.save
def save(self, name=None):
    out = real(self, name)
    if out is not None and not getattr(self, "limited", False):
        self.limited = True
        room = 16384 if what == "checkpoint" else 50  # the metrics of 5 steps fit in 16 KiB
        limit = (run / "metrics.jsonl").stat().st_size + room
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    return out
T.Trainer.save = save
from recis.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _run_limited(tmp_path: Path, what: str) -> subprocess.CompletedProcess:
    config = str(ROOT / "examples" / "multitask_synthetic.yaml")
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    assert hard == resource.RLIM_INFINITY or hard > 1 << 20
    return subprocess.run(
        [sys.executable, "-c", _LIMITED, what, str(tmp_path / "run"), "train", config]
        + _small_run_args(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _recis_lines(stderr: str) -> list[str]:
    """recis's own lines (torch's import-time warnings aside)."""
    return [x for x in stderr.splitlines() if x.startswith("recis")]


def _only_step5_left(run: Path) -> None:
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["step-00000005"], names  # no partial checkpoint, no .tmp-* left
    state, meta = load_checkpoint(latest_checkpoint(run))
    assert state["step"] == meta["step"] == 5


def test_file_too_large_while_checkpointing(tmp_path: Path) -> None:
    out = _run_limited(tmp_path, "checkpoint")
    assert out.returncode == 2, out.stderr
    lines = _recis_lines(out.stderr)
    assert len(lines) == 1 and lines[0].startswith("recis: error: "), out.stderr
    assert "step-00000010" in lines[0] and "File too large" in lines[0]
    assert ".safetensors" in lines[0] or ".json" in lines[0]  # the file that failed
    _only_step5_left(tmp_path / "run")
    model = tmp_path / "run" / "checkpoints" / "step-00000005" / "model.safetensors"
    assert model.stat().st_size > 16384 + (tmp_path / "run" / "metrics.jsonl").stat().st_size


def test_file_too_large_while_writing_metrics(tmp_path: Path) -> None:
    out = _run_limited(tmp_path, "metrics")
    assert out.returncode == 2, out.stderr
    lines = _recis_lines(out.stderr)
    assert len(lines) == 1 and "metrics.jsonl: cannot write metrics: File too large" in lines[0]
    assert lines[0].endswith(
        f"(last checkpoint: {tmp_path / 'run' / 'checkpoints' / 'step-00000005'})"
    )
    _only_step5_left(tmp_path / "run")


_DCP_LIMITED = r"""
import resource, signal, sys
from pathlib import Path
from torch import nn
from recis.distributed import checkpoint as dcp_checkpoint
from recis.errors import CheckpointError

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
root = Path(sys.argv[1])
model = nn.Linear(64, 64)
dcp_checkpoint.save(root / "step-1", model, None, {"step": 1})
resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.RLIM_INFINITY))
try:
    dcp_checkpoint.save(root / "step-2", model, None, {"step": 2})
except CheckpointError as err:
    print(err)
    sys.exit(3)
"""


def test_file_too_large_while_writing_a_distributed_checkpoint(tmp_path: Path) -> None:
    from torch import nn

    from recis.distributed import checkpoint as dcp_checkpoint

    out = subprocess.run(
        [sys.executable, "-c", _DCP_LIMITED, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 3, out.stderr
    assert ".tmp-step-2: cannot write checkpoint" in out.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-1"]
    assert dcp_checkpoint.latest(tmp_path).name == "step-1"
    assert dcp_checkpoint.load(tmp_path / "step-1", nn.Linear(64, 64))["step"] == 1


def test_a_kill_between_the_renames_of_a_replace_loses_no_best(tmp_path: Path) -> None:
    """``_publish`` renames ``best`` to ``.old-best-<pid>``, then the new one to ``best``:
    a kill in between leaves no ``best``. The next manager puts the old one back."""
    from recis.train import save_checkpoint

    ckpt = tmp_path / "checkpoints"
    w = torch.arange(12.0)
    save_checkpoint(ckpt / "best", {"model": {"w": w}, "step": 4}, {"step": 4})
    save_checkpoint(ckpt / "final", {"model": {"w": w + 1}, "step": 9}, {"step": 9})
    (ckpt / "best").rename(ckpt / ".old-best-4242")  # the state the kill left
    (ckpt / ".tmp-best-4242").mkdir()  # the new one, unfinished
    # a replace of final that finished its second rename: the old copy is stale
    save_checkpoint(ckpt / "x", {"model": {"w": w}, "step": 1}, {"step": 1})
    (ckpt / "x").rename(ckpt / ".old-final-4242")
    # a delete under way (files already gone): nothing to put back
    save_checkpoint(ckpt / "y", {"model": {"w": w}, "step": 2}, {"step": 2})
    (ckpt / "y" / "model.safetensors").unlink()
    (ckpt / "y").rename(ckpt / ".old-step-00000002-4242")
    CheckpointManager(ckpt).clean_partial()
    assert sorted(p.name for p in ckpt.iterdir()) == ["best", "final"]
    state, meta = load_checkpoint(ckpt / "best")
    assert meta["step"] == 4 and torch.equal(state["model"]["w"], w)
    assert load_checkpoint(ckpt / "final")[1]["step"] == 9


def test_distributed_checkpoint_files_are_fsynced(tmp_path: Path, monkeypatch) -> None:
    """ranks.json and meta.json reach the disk before the manifest names them, and the
    folders holding the renames are fsynced (as for single-process checkpoints)."""
    from torch import nn

    from recis.distributed import checkpoint as dcp_checkpoint

    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = dcp_checkpoint.save(tmp_path / "step-1", nn.Linear(4, 4), None, {"step": 1}, {"a": 1})
    tmp = str(tmp_path / ".tmp-step-1")
    for name in ("ranks.json", "meta.json", "manifest.json"):
        assert f"{tmp}/{name}" in synced, name
    assert tmp in synced and str(tmp_path) in synced
    assert (path / "ranks.json").is_file()
