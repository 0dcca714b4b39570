"""Atomic checkpoints: a writer killed by SIGKILL mid-write leaves the previous one loadable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from recis.errors import CheckpointError
from recis.train import CheckpointManager, latest_checkpoint, load_checkpoint

# The child writes a 64 MiB checkpoint whose pickling also blocks on a slow object, so the
# parent can kill it inside torch.save (state.pt open, unfinished), whatever the disk speed.
_CHILD = r"""
import importlib.util, sys, time, torch

# load checkpoint.py alone (not the recis.train package): the child starts in a second
spec = importlib.util.spec_from_file_location("ckpt", sys.argv[2])
ckpt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ckpt)
CheckpointManager = ckpt.CheckpointManager

class Slow:
    def __reduce__(self):
        time.sleep(60)
        return (str, ("never",))

mgr = CheckpointManager(sys.argv[1], keep_last=3)
mgr.save(2, {"big": torch.ones(16 * 1024 * 1024), "slow": Slow(), "step": 2}, {"step": 2})
"""


def test_sigkill_mid_write_leaves_previous_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoints"
    mgr = CheckpointManager(ckpt, keep_last=3)
    first = mgr.save(1, {"w": torch.arange(10.0), "step": 1}, {"step": 1})
    import recis.train.checkpoint as module

    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(ckpt), module.__file__])
    try:
        deadline = time.monotonic() + 120
        tmp = None
        while time.monotonic() < deadline:
            tmps = [p for p in ckpt.iterdir() if p.name.startswith(".tmp-")]
            if tmps and (tmps[0] / "state.pt").exists():  # opened: torch.save is running
                tmp = tmps[0]
                break
            assert child.poll() is None, "the writer exited before it could be killed"
            time.sleep(0.05)
        assert tmp is not None, "the writer never started writing"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    assert tmp.exists() and not (ckpt / "step-00000002").exists()
    # the half-written folder is invisible to readers, the previous checkpoint loads
    assert latest_checkpoint(tmp_path) == first
    state, meta = load_checkpoint(first)
    assert torch.equal(state["w"], torch.arange(10.0)) and meta["step"] == 1
    mgr.clean_partial()
    assert not tmp.exists()


def test_keep_last_and_errors(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path / "checkpoints", keep_last=2)
    for step in (5, 10, 15):
        mgr.save(step, {"step": step}, {"step": step})
    assert [p.name for p in mgr.checkpoints()] == ["step-00000010", "step-00000015"]
    # a truncated file is reported with its path, not as a pickle traceback
    (mgr.latest() / "state.pt").write_bytes(b"PK\x03\x04broken")
    with pytest.raises(CheckpointError, match="step-00000015"):
        load_checkpoint(mgr.latest())
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        latest_checkpoint(tmp_path / "elsewhere")
