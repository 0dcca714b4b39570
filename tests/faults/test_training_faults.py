"""Training never loses the model: signals, kills, failures after training, best restore.

Real `recis train` processes are interrupted by SIGINT and killed by SIGKILL (their steps
slowed down in the child so that the signal lands mid-run), then resumed; the results are
compared with an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recis.cli import main
from recis.config import EarlyStoppingConfig, OptimizerConfig, TableConfig, TrainConfig
from recis.errors import DataError
from recis.features import DenseFeature, LabelSpec, Schema, SparseFeature
from recis.io import ParquetReader
from recis.models import DLRM, DLRMConfig
from recis.synthetic import dense_names, sparse_names
from recis.train import Callback, Trainer, load_checkpoint
from recis.train.runlog import read_records

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "faults"))
from small_run import small_run_args  # noqa: E402  (the small `recis train` arguments)

sys.path.pop(0)
CONFIG = str(ROOT / "examples" / "multitask_synthetic.yaml")


@pytest.fixture(autouse=True)
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# `recis train` that, once step N is done, touches a marker file and waits (at most a
# minute) for the signal the test sends: it lands at that step whatever the machine's load
_SLOW = r"""
import sys, time
from pathlib import Path
from recis.train import trainer as T

marker, after = Path(sys.argv[1]), int(sys.argv[2])
real = T.Trainer.train_step
def step(self, *a, **kw):
    out = real(self, *a, **kw)
    if out is not None and self.step == after:
        marker.touch()
        deadline = time.monotonic() + 60
        while self.signals.received is None and time.monotonic() < deadline:
            time.sleep(0.01)
    return out
T.Trainer.train_step = step
from recis.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _start_slow(tmp_path: Path, after: int, argv: list[str]) -> tuple[subprocess.Popen, Path]:
    marker = tmp_path / f"marker-{after}"
    child = subprocess.Popen(
        [sys.executable, "-c", _SLOW, str(marker), str(after), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "the child never reached its step"
        time.sleep(0.05)
    return child, marker


def _model_state(run: Path) -> dict[str, torch.Tensor]:
    state, _ = load_checkpoint(run / "checkpoints" / "final")
    return state["model"]


def test_sigint_checkpoints_and_resumes_to_the_uninterrupted_result(tmp_path, capsys) -> None:
    data = tmp_path / "data"
    plain, cut = tmp_path / "plain", tmp_path / "cut"
    assert main(["train", CONFIG, *small_run_args(plain, data)]) == 0
    child, _ = _start_slow(tmp_path, 6, ["train", CONFIG, *small_run_args(cut, data)])
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    lines = [x for x in err.splitlines() if x.startswith("recis")]
    assert len(lines) == 1 and lines[0].startswith("recis: stopped by SIGINT: checkpoint "), err
    assert f"--resume {cut}" in lines[0]
    stopped = json.loads((cut / "eval.json").read_text())
    assert Path(stopped["checkpoint"]).name == "step-00000006"  # the step it was in
    assert not (cut / "checkpoints" / "final").exists()
    # resume as the line says: the run's own config.yaml
    assert main(["train", str(cut / "config.yaml"), "--resume", str(cut)]) == 0
    a, b = _model_state(plain), _model_state(cut)
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
    got, want = (
        json.loads((cut / "eval.json").read_text()),
        json.loads((plain / "eval.json").read_text()),
    )
    assert got == want  # the same final metrics, exactly
    steps = [r["step"] for r in read_records(cut) if r["split"] == "train"]
    assert steps == list(range(1, 21))
    capsys.readouterr()


def test_sigkill_then_resume_leaves_no_hole_in_the_history(tmp_path) -> None:
    run, data = tmp_path / "run", tmp_path / "data"
    argv = ["train", CONFIG, *small_run_args(run, data, "train.checkpoint_every=4")]
    child, _ = _start_slow(tmp_path, 7, argv)
    child.kill()
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    raw = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000004"]
    # killed at step 7: the records up to the checkpoint (step 4) were on disk before it
    assert {r["step"] for r in raw if r["split"] == "train"} >= {1, 2, 3, 4}
    assert main(["train", str(run / "config.yaml"), "--resume", str(run)]) == 0
    raw = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["step"] for r in raw if r["split"] == "train"} == set(range(1, 21))
    assert [r["step"] for r in read_records(run) if r["split"] == "train"] == list(range(1, 21))


def test_overwrite_replaces_only_the_previous_runs_outputs(tmp_path, capsys) -> None:
    run, data = tmp_path / "run", tmp_path / "data"
    args = small_run_args(run, data, "train.max_steps=3")
    assert main(["train", CONFIG, *args]) == 0
    (run / "notes.txt").write_text("mine")
    (run / "checkpoints" / "step-00000099").mkdir()  # would pass for the newest
    assert main(["train", CONFIG, *args]) == 2
    assert "holds a previous run" in capsys.readouterr().err
    # the same under a launcher: refused on every rank before the process group forms
    from recis.config import load_config
    from recis.distributed import run as distributed_run
    from recis.errors import OutputError

    cfg = load_config(CONFIG, [args[i + 1] for i in range(0, len(args), 2)])
    with pytest.raises(OutputError, match="holds a previous run"):
        distributed_run.train(cfg, "torchrun")
    assert main(["train", CONFIG, *args, "--overwrite"]) == 0
    assert (run / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["final", "step-00000003"]
    assert [r["step"] for r in read_records(run) if r["split"] == "train"] == [1, 2, 3]


SCHEMA = Schema(
    dense=[DenseFeature(n, transform="log") for n in dense_names()[:2]],
    sparse=[SparseFeature(n) for n in sparse_names()[:3]],
    labels=[LabelSpec("click", column="label")],
)


def _trainer(train: ParquetReader, evals: ParquetReader, run: Path, **kw) -> Trainer:
    torch.manual_seed(0)
    model = DLRM(
        DLRMConfig(
            tables=[TableConfig(name=f.name, dim=4, capacity=5000) for f in SCHEMA.sparse],
            bottom_mlp=[8, 4],
            top_mlp=[8],
        ),
        SCHEMA,
        torch.device("cpu"),
    )
    adam = OptimizerConfig(name="adam", lr=0.01)
    cfg = TrainConfig(progress=False, tensorboard=False, dense_optimizer=adam, **kw)
    return Trainer(model, train, evals, cfg, run_dir=run)


def test_bad_eval_row_after_training_keeps_the_model(small_ctr, tmp_path) -> None:
    path, _ = small_ctr
    table = pq.read_table(next((path / "eval").glob("*.parquet")))
    col = dense_names()[0]
    values = table[col].to_pylist()
    values[3000] = float("nan")  # one bad row, in a batch after the first
    bad = table.set_column(
        table.schema.get_field_index(col), col, pa.array(values, type=table[col].type)
    )
    pq.write_table(bad, tmp_path / "eval.parquet")
    train = ParquetReader(path / "train", SCHEMA, 2048, shuffle=True, seed=1)
    evals = ParquetReader(tmp_path / "eval.parquet", SCHEMA, 1024, nan_policy="raise")
    trainer = _trainer(train, evals, tmp_path / "run", max_steps=5)
    with pytest.raises(DataError) as err:
        trainer.fit()
    final = tmp_path / "run" / "checkpoints" / "final"
    assert f"the trained model is saved in {final}" in str(err.value)
    state, meta = load_checkpoint(final)
    assert meta["step"] == 5 and state["step"] == 5


class _Wreck(Callback):
    """After the first epoch, every step scrambles the dense weights: later epochs are worse."""

    def on_step_end(self, trainer: Trainer, record: dict) -> None:
        if trainer.epoch >= 1:
            with torch.no_grad():
                for p in trainer.dense_params:
                    p.uniform_(-1.0, 1.0)


def test_restore_best_evaluates_and_saves_the_best_epoch(small_ctr, tmp_path) -> None:
    path, _ = small_ctr
    train = ParquetReader(path / "train", SCHEMA, 2048, shuffle=True, seed=1)
    evals = ParquetReader(path / "eval", SCHEMA, 4096)
    stop = EarlyStoppingConfig(metric="click/logloss", mode="min", patience=10, restore_best=True)
    trainer = _trainer(
        train, evals, tmp_path / "run", epochs=3, eval_each_epoch=True, early_stopping=stop
    )
    trainer.callbacks.append(_Wreck())
    result = trainer.fit()
    records = read_records(tmp_path / "run")
    history = [r for r in records if r["split"] == "eval"]
    assert [r["epoch"] for r in records if r["split"] == "train"][-1] == 2
    assert len(history) == 3  # one evaluation per epoch, in metrics.jsonl
    losses = [r["click/logloss"] for r in history]
    assert min(losses[1:]) > losses[0] + 0.01, losses  # the later epochs were worse
    assert result["best_step"] == history[0]["step"] and result["best_epoch"] == 1
    assert result["click/auc"] == pytest.approx(history[0]["click/auc"], abs=1e-6)
    assert result["click/logloss"] == pytest.approx(history[0]["click/logloss"], abs=1e-6)
    final_state, final_meta = load_checkpoint(tmp_path / "run" / "checkpoints" / "final")
    assert final_meta["step"] == history[0]["step"]
    for k, v in trainer.model.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, final_state["model"][k]), k
    assert [r["split"] for r in records if r["split"] == "best"] == ["best"]
    assert os.path.samefile(
        tmp_path / "run" / "checkpoints" / "best" / "model.safetensors",
        tmp_path / "run" / "checkpoints" / "final" / "model.safetensors",
    )


def test_restore_best_without_its_link_uses_the_numbered_checkpoint(small_ctr, tmp_path) -> None:
    """A kill between a new best's save and its ``best`` link (or a resume from an older
    checkpoint, which sets ``best`` aside) must not fail the run at its end."""
    path, _ = small_ctr
    train = ParquetReader(path / "train", SCHEMA, 2048, shuffle=True, seed=1)
    evals = ParquetReader(path / "eval", SCHEMA, 4096)
    stop = EarlyStoppingConfig(metric="click/logloss", mode="min", patience=10, restore_best=True)
    trainer = _trainer(
        train, evals, tmp_path / "run", epochs=2, eval_each_epoch=True, early_stopping=stop
    )
    trainer.callbacks.append(_Wreck())
    link = trainer.checkpointer.link
    trainer.checkpointer.link = lambda source, name: None if name == "best" else link(source, name)
    result = trainer.fit()
    history = [r for r in read_records(tmp_path / "run") if r["split"] == "eval"]
    assert not (tmp_path / "run" / "checkpoints" / "best").exists()
    assert result["best_step"] == history[0]["step"]
    assert result["click/logloss"] == pytest.approx(history[0]["click/logloss"], abs=1e-6)
    _, final_meta = load_checkpoint(tmp_path / "run" / "checkpoints" / "final")
    assert final_meta["step"] == history[0]["step"]
