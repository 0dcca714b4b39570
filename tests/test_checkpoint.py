"""Checkpoint format: safetensors + tagged JSON round trip, manifest, keep_last, errors.

The fault tests (pickle payloads, corruption of every file, SIGKILL during saves, full
disks) are in tests/faults/test_checkpoint_*.py.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from recis.errors import CheckpointError
from recis.train import CheckpointManager, latest_checkpoint, load_checkpoint, save_checkpoint
from recis.train.checkpoint import verify
from recis.train.state import rng_state, rng_state_json, set_rng_state, set_rng_state_json


def _tricky_state() -> dict:
    base = torch.arange(12.0).reshape(3, 4)
    return {
        "model": {
            "w": base,
            "view": base[1],  # shares storage with w: stored as its own copy
            "half": torch.ones(2, dtype=torch.bfloat16),
            "ids": torch.tensor([2**62, -5], dtype=torch.int64),
            "empty": torch.empty(0, 4),
            "_extra_state": {"mappers": {"C1": {"next_unused": 3, "rows": torch.arange(3)}}},
        },
        "optimizers": [
            {
                "state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.ones(3, 4)}},
                "param_groups": [{"params": [0], "betas": (0.9, 0.999), "foreach": None}],
            }
        ],
        "rng": rng_state(),
        "data": {
            "pos": np.int64(7),
            "rng": np.arange(5, dtype=np.uint32),
            "nan": float("nan"),
            "inf": float("-inf"),
            "raw": b"\x00\xff",
            "dtype": torch.float16,
            "size": torch.Size([2, 3]),
            "__odd": 1,  # a key that looks like a tag: stored as a tagged dict
            "big": 2**100,
        },
        "step": 25,
    }


def test_round_trip_is_exact(tmp_path: Path) -> None:
    state = _tricky_state()
    path = save_checkpoint(tmp_path / "ck", state, {"step": 25})
    names = sorted(p.name for p in path.iterdir())
    # one safetensors file per part holding tensors ("data" holds none), JSON for the rest
    assert names == [
        "manifest.json",
        "meta.json",
        "model.safetensors",
        "optimizers.safetensors",
        "rng.safetensors",
        "state.json",
    ]
    got, meta = load_checkpoint(path)
    assert meta["step"] == 25 and got["step"] == 25
    m = got["model"]
    assert torch.equal(m["w"], state["model"]["w"]) and torch.equal(m["view"], base_row())
    assert m["half"].dtype == torch.bfloat16 and m["ids"].tolist() == [2**62, -5]
    assert m["empty"].shape == (0, 4)
    assert torch.equal(m["_extra_state"]["mappers"]["C1"]["rows"], torch.arange(3))
    opt = got["optimizers"][0]
    assert list(opt["state"]) == [0] and torch.equal(opt["state"][0]["exp_avg"], torch.ones(3, 4))
    assert opt["param_groups"][0]["betas"] == (0.9, 0.999)
    d = got["data"]
    assert d["pos"] == 7 and d["pos"].dtype == np.int64
    assert d["rng"].dtype == np.uint32 and d["rng"].tolist() == [0, 1, 2, 3, 4]
    assert np.isnan(d["nan"]) and d["inf"] == float("-inf") and d["raw"] == b"\x00\xff"
    assert d["dtype"] is torch.float16 and d["size"] == torch.Size([2, 3])
    assert d["__odd"] == 1 and d["big"] == 2**100
    # RNG states come back exactly: the same draws after restoring
    set_rng_state(got["rng"])
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state["rng"])
    assert a == (random.random(), np.random.rand(), torch.rand(1).item())


def base_row() -> torch.Tensor:
    return torch.arange(4.0, 8.0)


def test_rng_state_json_round_trip() -> None:
    saved = json.loads(json.dumps(rng_state_json()))  # through real JSON text
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state_json(saved, "ranks.json")
    assert a == (random.random(), np.random.rand(), torch.rand(1).item())
    with pytest.raises(CheckpointError, match="ranks.json"):
        set_rng_state_json({"python": 1}, "ranks.json")


def test_values_that_cannot_be_stored_are_named(tmp_path: Path) -> None:
    class Opaque:
        pass

    with pytest.raises(CheckpointError, match=r"data/reader/cursor: a .*Opaque cannot be"):
        save_checkpoint(tmp_path / "ck", {"data": {"reader": {"cursor": Opaque()}}}, {})
    assert not (tmp_path / "ck").exists() and list(tmp_path.iterdir()) == []  # no leftovers


def test_keep_last_latest_and_errors(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path / "checkpoints", keep_last=2)
    for step in (5, 10, 15):
        mgr.save(step, {"model": {"w": torch.full((2,), float(step))}, "step": step}, {})
    assert [p.name for p in mgr.checkpoints()] == ["step-00000010", "step-00000015"]
    assert latest_checkpoint(tmp_path) == mgr.latest()
    files = verify(mgr.latest())
    assert set(files) == {"model.safetensors", "state.json", "meta.json"}
    manifest = json.loads((mgr.latest() / "manifest.json").read_text())
    assert (
        manifest["files"]["model.safetensors"]["size"]
        == (mgr.latest() / "model.safetensors").stat().st_size
    )
    with pytest.raises(CheckpointError, match="no checkpoint"):
        latest_checkpoint(tmp_path / "elsewhere")
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        load_checkpoint(tmp_path / "nothing")
