"""recis prune on a run directory: calibration rows from the reader, the pruned run's
config and checkpoint reload with the pruned shapes, and the CLI end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from recis.cli import main
from recis.config import load_config
from recis.prune.run import calibration_batches, load_run_model, prune_run
from recis.prune.slimgpt import PruneOptions, prune_model


def test_calibration_rows_come_from_the_reader_in_file_order(tmp_path: Path, make_run) -> None:
    run = make_run(tmp_path)
    cfg = load_config(run / "config.yaml")
    batches = calibration_batches(cfg, samples=40)
    assert [b.batch_size for b in batches] == [32, 32]  # whole batches up to >= 40 rows
    clicks = torch.cat([b.labels["click"] for b in batches]).numpy()
    np.testing.assert_array_equal(clicks, np.arange(64) % 2)
    users = torch.cat([b.sparse["user"].values() for b in batches]).numpy()
    np.testing.assert_array_equal(users, pq.read_table(tmp_path / "train.parquet")["user"][:64])


def test_pruned_run_reloads_with_its_shapes_and_outputs(tmp_path: Path, make_run) -> None:
    run = make_run(tmp_path)
    out = tmp_path / "pruned"
    report = prune_run(run, out, PruneOptions(0.5, schedule="incremental"), samples=64)
    cfg = load_config(out / "config.yaml")
    assert cfg.model.structure == report.structure()
    assert cfg.run_dir == str(out)
    # incremental over 4 layers at 0.5: ratios 0.25, 0.47, 0.60, 0.69 (heads of 4, FFN of
    # 32, the task head's 8 hidden channels); the counts keep the model's share: 5 of 12
    # heads (5.3 asked), 48 of the 104 FFN and head channels (47.5 asked)
    assert cfg.model.structure == {
        "hetero.0": {"heads": 3, "ffn": 24},
        "hetero.1": {"heads": 2, "ffn": 17},
        "hiformer.0": {"heads": 2, "ffn": 13},
        "heads.0.0": {"ffn": 2},  # the task head's MLP: Linear(16, 8), ReLU, Linear(8, 1)
    }
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


def test_recis_prune_cli_end_to_end_then_eval(tmp_path: Path, capsys, make_run) -> None:
    run = make_run(tmp_path)
    out = tmp_path / "pruned"
    args = ["prune", str(run), "--ratio", "0.3", "--out", str(out), "--samples", "64"]
    assert main([*args, "--calibration", str(tmp_path / "train.parquet")]) == 0
    assert "pruned 4 layers" in capsys.readouterr().out  # 3 transformer layers, the head
    ckpt = str(out / "checkpoints" / "final")
    assert main(["eval", str(out / "config.yaml"), "--checkpoint", ckpt]) == 0
    assert "click/auc" in capsys.readouterr().out
    # an output that holds a run is refused, in one line
    assert main(args) == 2
    assert "holds a run already" in capsys.readouterr().err
