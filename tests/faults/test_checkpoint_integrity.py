"""Corrupted, incomplete and mismatched checkpoints are refused by name, never trained on.

Every file kind of a real trainer checkpoint is damaged in every way (bytes zeroed or
flipped, truncated, removed, junk appended, an extra file): loading is a CheckpointError
naming the file. A broken newest checkpoint is not passed over for an older one, and an
older one can be resumed explicitly. Another model, dim or table layout is named with the
parameter and both shapes.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from recis.config import TableConfig, TrainConfig
from recis.distributed.run import train as run_train
from recis.errors import CheckpointError
from recis.features import DenseFeature, LabelSpec, Schema, SparseFeature
from recis.io import ParquetReader
from recis.models import DLRM, DLRMConfig
from recis.synthetic import dense_names, sparse_names
from recis.train import Trainer, latest_checkpoint, load_checkpoint

SCHEMA = Schema(
    dense=[DenseFeature(n, transform="log") for n in dense_names()[:2]],
    sparse=[SparseFeature(n) for n in sparse_names()[:3]],
    labels=[LabelSpec("click", column="label")],
)


def _trainer(small_ctr, run_dir: Path | None, dim: int = 4, tables: int = 3, **kw) -> Trainer:
    path, _ = small_ctr
    torch.manual_seed(0)
    schema = Schema(dense=SCHEMA.dense, sparse=SCHEMA.sparse[:tables], labels=SCHEMA.labels)
    model = DLRM(
        DLRMConfig(
            tables=[TableConfig(name=f.name, dim=dim, capacity=2000) for f in schema.sparse],
            bottom_mlp=[8, dim],
            top_mlp=[8],
        ),
        schema,
        torch.device("cpu"),
    )
    cfg = TrainConfig(progress=False, tensorboard=False, **kw)
    train = ParquetReader(path / "train", schema, 2048, shuffle=True, seed=1)
    return Trainer(model, train, None, cfg, run_dir=run_dir)


@pytest.fixture(scope="module")
def saved_run(small_ctr, tmp_path_factory) -> Path:
    """A run directory with checkpoints step-00000002 and step-00000004."""
    run = tmp_path_factory.mktemp("run")
    _trainer(small_ctr, run, max_steps=4, checkpoint_every=2).fit()
    return run


FILES = [
    "model.safetensors",
    "optimizers.safetensors",
    "rng.safetensors",
    "state.json",
    "meta.json",
    "manifest.json",
]


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    # the first non-zero byte from the middle on (inside a tensor for the tensor files):
    # zeroing bytes that are already zero would change nothing
    mid = next((i for i in range(len(data) // 2, len(data)) if data[i]), len(data) // 2)
    if how == "zeroed":
        data[mid : mid + 8] = bytes(min(8, len(data) - mid))
    elif how == "flipped":
        data[mid] ^= 0x01
    elif how == "truncated":
        data = data[:mid]
    elif how == "junk":
        data += b"\x00junk"
    if how == "removed":
        path.unlink()
    else:
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["zeroed", "flipped", "truncated", "junk", "removed"])
@pytest.mark.parametrize("name", FILES)
def test_every_file_kind_damaged_is_refused_by_name(saved_run, tmp_path, name, how) -> None:
    ck = tmp_path / "step-00000004"
    shutil.copytree(saved_run / "checkpoints" / "step-00000004", ck)
    assert (ck / name).is_file(), sorted(p.name for p in ck.iterdir())
    _damage(ck / name, how)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(ck)
    assert name in str(err.value) and "\n" not in str(err.value)


def test_extra_file_is_refused(saved_run, tmp_path) -> None:
    ck = tmp_path / "ck"
    shutil.copytree(saved_run / "checkpoints" / "step-00000004", ck)
    (ck / "state.pt").write_bytes(b"anything")
    with pytest.raises(CheckpointError, match=r"state\.pt: not part of the checkpoint"):
        load_checkpoint(ck)


def test_broken_newest_is_refused_and_older_resumes_explicitly(
    small_ctr, saved_run, tmp_path, capsys
) -> None:
    run = tmp_path / "run"
    shutil.copytree(saved_run, run)
    (run / "checkpoints" / "step-00000004" / "rng.safetensors").unlink()
    assert latest_checkpoint(run).name == "step-00000004"  # not passed over
    trainer = _trainer(small_ctr, run, max_steps=6)
    with pytest.raises(CheckpointError) as err:
        trainer.resume(latest_checkpoint(run))
    msg = str(err.value)
    assert "step-00000004/rng.safetensors: missing" in msg
    assert f"--resume {run / 'checkpoints' / 'step-00000002'}" in msg  # what to do instead
    # the run directory through the runner: the same refusal
    from recis.config import build_run_config

    cfg = build_run_config(
        {
            "data": {
                "train": str(small_ctr[0] / "train"),
                "batch_size": 2048,
                "schema": {
                    "dense": [{"name": f.name, "transform": "log"} for f in SCHEMA.dense],
                    "sparse": [{"name": f.name} for f in SCHEMA.sparse],
                    "labels": [{"name": "click", "column": "label"}],
                },
            },
            "model": {
                "name": "dlrm",
                "tables": [{"name": f.name, "dim": 4, "capacity": 2000} for f in SCHEMA.sparse],
                "bottom_mlp": [8, 4],
                "top_mlp": [8],
            },
            "train": {"max_steps": 6, "progress": False, "tensorboard": False},
            "run_dir": str(run),
            "threads": 1,
            "seed": 1,  # the reader's, as in _trainer
        }
    )
    with pytest.raises(CheckpointError, match="step-00000004/rng.safetensors: missing"):
        run_train(cfg, resume=run)
    # an older checkpoint named explicitly resumes; the broken newer one is set aside
    run_train(cfg, resume=run / "checkpoints" / "step-00000002")
    out = capsys.readouterr().out
    assert "resumed from" in out and "step-00000004.superseded" in out
    assert latest_checkpoint(run).name == "step-00000006"
    assert load_checkpoint(run / "checkpoints" / "final")[0]["step"] == 6


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"dim": 8}, r"dense_arch\.2\.weight is \[4, 8\] in the checkpoint, \[8, 8\] in the model"),
        ({"tables": 2}, r"unexpected sparse_arch\S*C3"),
    ],
)
def test_other_model_is_named_not_a_traceback(small_ctr, saved_run, kw, expected) -> None:
    other = _trainer(small_ctr, None, **kw)
    with pytest.raises(CheckpointError, match=expected) as err:
        other.resume(saved_run / "checkpoints" / "step-00000004")
    assert "step-00000004" in str(err.value) and "\n" not in str(err.value)


def test_missing_parameter_is_named(small_ctr, saved_run, tmp_path) -> None:
    state, _ = load_checkpoint(saved_run / "checkpoints" / "step-00000004")
    key = next(k for k in state["model"] if k.startswith("top_arch"))
    del state["model"][key]
    trainer = _trainer(small_ctr, None)
    with pytest.raises(CheckpointError, match="missing " + re.escape(key)):
        trainer.load_state_dict(state, source="ck")


def test_values_this_trainer_did_not_write_are_named(small_ctr, saved_run, tmp_path) -> None:
    """A state.json edited by hand (manifest rewritten to match): no traceback either."""
    import json

    from recis.train.checkpoint import write_manifest

    ck = tmp_path / "ck"
    shutil.copytree(saved_run / "checkpoints" / "step-00000004", ck)
    state = json.loads((ck / "state.json").read_text())
    state["step"] = "four"
    (ck / "state.json").write_text(json.dumps(state))
    write_manifest(ck)
    with pytest.raises(CheckpointError, match=r"ck: not a trainer state .*four"):
        _trainer(small_ctr, None).resume(ck)
    (ck / "state.json").write_text("[" * 100_000 + "]" * 100_000)
    write_manifest(ck)
    with pytest.raises(CheckpointError, match="state.json"):
        load_checkpoint(ck)


def test_distributed_checkpoint_given_to_the_single_process_trainer(small_ctr, tmp_path) -> None:
    from torch import nn

    from recis.distributed import checkpoint as dcp_checkpoint

    path = dcp_checkpoint.save(tmp_path / "step-1", nn.Linear(2, 2), None, {"step": 1})
    with pytest.raises(CheckpointError, match="a distributed .DCP. checkpoint: resume it under"):
        _trainer(small_ctr, None).resume(path)
