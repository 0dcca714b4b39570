"""A tiny HHFT run directory (real parquet data, config.yaml, checkpoints/final) for the
pruning tests: ``make_run(tmp_path)``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from recis.config import load_config
from recis.models import build_model
from recis.prune.run import calibration_batches
from recis.train.checkpoint import save_checkpoint

ROWS = 96


def _write_data(path: Path, learnable: bool) -> None:
    rng = np.random.default_rng(0)
    item = rng.integers(0, 20, ROWS)
    # alternating clicks make the row order checkable; learnable clicks follow the item
    click = (item < 8) if learnable else np.arange(ROWS) % 2
    pq.write_table(
        pa.table(
            {
                "user": rng.integers(0, 30, ROWS),
                "item": item,
                "hist_item": [list(rng.integers(0, 20, rng.integers(1, 5))) for _ in range(ROWS)],
                "age": rng.random(ROWS),
                "click": click.astype(np.float64),
            }
        ),
        path,
    )


def _config(tmp_path: Path, data: Path) -> dict:
    return {
        "run_dir": str(tmp_path / "run"),
        "device": "cpu",
        "data": {
            "train": str(data),
            "eval": str(data),
            "batch_size": 32,
            "schema": {
                "labels": [{"name": "click"}],
                "dense": [{"name": "age"}],
                "sparse": [
                    {"name": "user", "table": "user"},
                    {"name": "item", "table": "item"},
                    {"name": "hist_item", "table": "item_seq", "max_len": 4},
                ],
            },
        },
        "model": {
            "name": "hhft",
            "embedding": "modulo",  # torchrec EBC: the hashed engine is not what is tested
            "blocks": [
                {"name": "user", "sparse": ["user"], "dense": ["age"], "tokens": 2},
                {"name": "item", "sparse": ["item"]},
                {"name": "seq", "sequence": ["hist_item"], "target": ["item"]},
            ],
            "d_model": 16,
            "num_heads": 4,
            "hetero_layers": 2,
            "hiformer_layers": 1,
            "head_mlp": [8],
            "tables": [
                {"name": "user", "dim": 8, "capacity": 64},
                {"name": "item", "dim": 8, "capacity": 64},
                {"name": "item_seq", "dim": 8, "capacity": 64, "pooling": "none"},
            ],
        },
        "train": {"dense_optimizer": {"name": "adamw", "lr": 0.01}, "progress": False},
    }


def _run_dir(tmp_path: Path, learnable: bool = False) -> Path:
    """A run directory as recis train leaves it: config.yaml and checkpoints/final (the
    weights are the freshly built model's; pruning does not care how they were trained)."""
    data = tmp_path / "train.parquet"
    _write_data(data, learnable)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(_config(tmp_path, data)))
    cfg = load_config(run / "config.yaml")
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.data.schema_, "cpu")
    # some rows in the tables: the ids of the data
    for batch in calibration_batches(cfg, samples=ROWS):
        model(batch)
    save_checkpoint(run / "checkpoints" / "final", {"model": model.state_dict()}, {"step": 7})
    return run


@pytest.fixture
def make_run() -> Callable[..., Path]:
    """``make_run(tmp_path, learnable=False)``: the run directory (see :func:`_run_dir`)."""
    return _run_dir
