"""recis prune on a run directory: calibration rows from the reader, the pruned run's
config and checkpoint reload with the pruned shapes, and the CLI end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml

from recis.cli import main
from recis.config import load_config
from recis.models import build_model
from recis.prune.run import calibration_batches, load_run_model, prune_run
from recis.prune.slimgpt import PruneOptions, prune_model
from recis.train.checkpoint import save_checkpoint

ROWS = 96


def _run_dir(tmp_path: Path) -> Path:
    """A run directory as recis train leaves it: config.yaml and checkpoints/final (the
    weights are the freshly built model's; pruning does not care how they were trained)."""
    rng = np.random.default_rng(0)
    data = tmp_path / "train.parquet"
    pq.write_table(
        pa.table(
            {
                "user": rng.integers(0, 30, ROWS),
                "item": rng.integers(0, 20, ROWS),
                "hist_item": [list(rng.integers(0, 20, rng.integers(1, 5))) for _ in range(ROWS)],
                "age": rng.random(ROWS),
                "click": np.arange(ROWS, dtype=np.float64) % 2,  # row order is checkable
            }
        ),
        data,
    )
    config = {
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
    }
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    cfg = load_config(run / "config.yaml")
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.data.schema_, "cpu")
    # some rows in the tables: the ids of the data
    for batch in calibration_batches(cfg, samples=ROWS):
        model(batch)
    save_checkpoint(run / "checkpoints" / "final", {"model": model.state_dict()}, {"step": 7})
    return run


def test_calibration_rows_come_from_the_reader_in_file_order(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    cfg = load_config(run / "config.yaml")
    batches = calibration_batches(cfg, samples=40)
    assert [b.batch_size for b in batches] == [32, 32]  # whole batches up to >= 40 rows
    clicks = torch.cat([b.labels["click"] for b in batches]).numpy()
    np.testing.assert_array_equal(clicks, np.arange(64) % 2)
    users = torch.cat([b.sparse["user"].values() for b in batches]).numpy()
    np.testing.assert_array_equal(users, pq.read_table(tmp_path / "train.parquet")["user"][:64])


def test_pruned_run_reloads_with_its_shapes_and_outputs(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    out = tmp_path / "pruned"
    report = prune_run(run, out, PruneOptions(0.5, schedule="incremental"), samples=64)
    cfg = load_config(out / "config.yaml")
    assert cfg.model.structure == report.structure()
    assert cfg.run_dir == str(out)
    # incremental over 3 layers at 0.5: ratios 0.25, 0.54, 0.71 (heads of 4, FFN of 32)
    assert list(cfg.model.structure.values()) == [
        {"heads": 3, "ffn": 24},
        {"heads": 2, "ffn": 15},
        {"ffn": 9},  # Hiformer: FFN only
    ]
    model, meta = load_run_model(cfg, out / "checkpoints" / "final")
    assert model.hetero[1].heads == 2 and model.hetero[1].q.linears[0].weight.shape == (8, 16)
    original, _ = load_run_model(load_config(run / "config.yaml"), run / "checkpoints" / "final")
    pruned, _ = load_run_model(cfg, out / "checkpoints" / "final")
    assert sum(p.numel() for p in pruned.parameters()) < sum(
        p.numel() for p in original.parameters()
    )
    assert meta["step"] == 7 and meta["pruned_from"].endswith("final")
    # the reloaded model computes what the pruned model in memory computed
    batches = calibration_batches(load_config(run / "config.yaml"), samples=64)
    prune_model(original, PruneOptions(0.5, schedule="incremental"), batches)
    original.eval(), pruned.eval()
    with torch.no_grad():
        torch.testing.assert_close(pruned(batches[0])["click"], original(batches[0])["click"])


def test_recis_prune_cli_end_to_end_then_eval(tmp_path: Path, capsys) -> None:
    run = _run_dir(tmp_path)
    out = tmp_path / "pruned"
    args = ["prune", str(run), "--ratio", "0.3", "--out", str(out), "--samples", "64"]
    assert main([*args, "--calibration", str(tmp_path / "train.parquet")]) == 0
    assert "pruned 3 layers" in capsys.readouterr().out
    ckpt = str(out / "checkpoints" / "final")
    assert main(["eval", str(out / "config.yaml"), "--checkpoint", ckpt]) == 0
    assert "click/auc" in capsys.readouterr().out
    # an output that holds a run is refused, in one line
    assert main(args) == 2
    assert "holds a run already" in capsys.readouterr().err
