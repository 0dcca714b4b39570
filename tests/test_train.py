"""Trainer: exact resume, SIGTERM, accumulation, clipping, bf16, schedules, early stopping."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from recis.config import (
    EarlyStoppingConfig,
    OptimizerConfig,
    PriorityConfig,
    ScheduleConfig,
    TableConfig,
    TaskConfig,
    TrainConfig,
)
from recis.distributed.hashed import ShardedHashedEmbeddingCollection
from recis.features import DenseFeature, LabelSpec, Schema, SparseFeature
from recis.io import ParquetReader
from recis.models import DLRM, DLRMConfig
from recis.optim import lr_factor
from recis.synthetic import dense_names, sparse_names
from recis.train import Callback, EarlyStopping, Trainer, latest_checkpoint


@pytest.fixture(autouse=True)
def one_thread():
    """Fixed threads: bitwise-reproducible CPU math, and immune to other processes' load."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SCHEMA = Schema(
    dense=[DenseFeature(n, transform="log") for n in dense_names()[:4]],
    sparse=[SparseFeature(n) for n in sparse_names()[:6]],
    # two tasks on one column: enough to exercise the priority objective's state
    labels=[LabelSpec("click", column="label"), LabelSpec("click2", column="label")],
)


def _model(seed: int) -> DLRM:
    torch.manual_seed(seed)
    cfg = DLRMConfig(
        tables=[TableConfig(name=f.name, dim=4, capacity=5000) for f in SCHEMA.sparse],
        bottom_mlp=[8, 4],
        top_mlp=[8],
        dropout=0.2,  # consumes the torch RNG: resume must restore it
    )
    return DLRM(cfg, SCHEMA, torch.device("cpu"))


def _trainer(
    small_ctr, run_dir, max_steps: int, seed: int = 0, send_ahead: bool = False, **kw
) -> Trainer:
    path, _ = small_ctr
    cfg = TrainConfig(
        epochs=10,
        max_steps=max_steps,
        progress=False,
        tasks=[TaskConfig("click", priority=0), TaskConfig("click2", priority=1)],
        objective="priority",
        priority=PriorityConfig(stage_steps=10),
        dense_optimizer=OptimizerConfig(name="adam", lr=0.01),
        schedule=ScheduleConfig(name="cosine", warmup_steps=5, total_steps=60),
        tensorboard=False,
        **kw,
    )
    train = ParquetReader(path / "train", SCHEMA, 1024, shuffle=True, seed=3)
    evals = ParquetReader(path / "eval", SCHEMA, 4096)
    model = _model(seed)
    if send_ahead:  # the sharded engine routing ids in one process: it sends them ahead
        coll = model.sparse_arch
        model.sparse_arch = ShardedHashedEmbeddingCollection(
            coll, exchange=True, placement=dict.fromkeys(coll.tables, 0)
        )
    return Trainer(model, train, evals, cfg, run_dir=run_dir)


def _same(a, b) -> bool:  # type: ignore[no-untyped-def]
    """Bitwise equality of tensors, also inside extra state (dicts of tensors and numbers)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


@pytest.mark.parametrize(
    ("send_ahead", "map_ahead"), [(False, "off"), (False, "on"), (True, "off")]
)
def test_exact_resume_is_bitwise(small_ctr, tmp_path, send_ahead, map_ahead) -> None:
    """``send_ahead``: the model sends the next batch's ids ahead, ``map_ahead``: the hashed
    collection looks them up ahead; either way fit reads one batch ahead, and checkpoints
    still hold the position after the last batch trained on."""
    # 20k rows at batch 1024: 20 batches an epoch, so 2N = 50 steps cross
    # two epoch boundaries and the stop at N = 25 falls mid-epoch
    kw = {"send_ahead": send_ahead, "map_ahead": map_ahead}
    full = _trainer(small_ctr, tmp_path / "full", 50, **kw)
    full.fit()
    half = _trainer(small_ctr, tmp_path / "half", 25, **kw)
    half.fit()
    resumed = _trainer(small_ctr, tmp_path / "half", 50, seed=99, **kw)
    resumed.resume(latest_checkpoint(tmp_path / "half"))  # other init: all must load
    assert resumed.step == 25 and resumed.train_data.state_dict()["epoch"] == 1
    # the batch read ahead went back to the reader: it is where the checkpoint says
    assert half.train_data.state_dict() == resumed.train_data.state_dict()
    # every step but the first of each fit found its ids sent (or looked up) ahead
    ahead = half.model.sparse_arch.prefetched_lookups
    assert ahead == (25 - 2 if send_ahead or map_ahead == "on" else 0)
    resumed.fit()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert _same(a[k], b[k]), k
    assert full.objective.state_dict() == resumed.objective.state_dict()
    assert full.objective.lam["click"] == resumed.objective.lam["click"]
    sa, sb = full.dense_optimizer.state_dict(), resumed.dense_optimizer.state_dict()
    for i in sa["state"]:
        assert torch.equal(sa["state"][i]["exp_avg_sq"], sb["state"][i]["exp_avg_sq"])
    assert full.scheduler.get_last_lr() == resumed.scheduler.get_last_lr()
    assert full.train_data.state_dict() == resumed.train_data.state_dict()
    # without restoring the position/RNG the run would differ (the test can fail)
    other = _trainer(small_ctr, tmp_path / "other", 25, seed=1, map_ahead=map_ahead)
    other.fit()
    assert not torch.equal(other.model.state_dict()["top_arch.0.weight"], a["top_arch.0.weight"])


def test_sigterm_checkpoints_and_stops(small_ctr, tmp_path) -> None:
    class Kill(Callback):
        def on_step_end(self, trainer, record) -> None:
            if trainer.step == 7:
                os.kill(os.getpid(), signal.SIGTERM)

    trainer = _trainer(small_ctr, tmp_path, 40)
    trainer.callbacks.append(Kill())
    result = trainer.fit()
    assert result["stopped"] == "sigterm" and trainer.step == 7
    assert result["checkpoint"] == str(tmp_path / "checkpoints" / "step-00000007")
    assert latest_checkpoint(tmp_path).name == "step-00000007"
    assert signal.getsignal(signal.SIGTERM) != trainer.signals.handler  # handler restored


def test_grad_accum_clip_bf16_and_logs(small_ctr, tmp_path) -> None:
    trainer = _trainer(
        small_ctr, tmp_path, 3, grad_accum=2, clip=1e-4, bf16=True, checkpoint_every=2, keep_last=1
    )
    seen: list[torch.dtype] = []
    trainer.model.top_arch.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    before = [p.detach().clone() for p in trainer.dense_params]
    trainer.dense_optimizer = torch.optim.SGD(trainer.dense_params, lr=1.0)
    trainer.optimizers[0] = trainer.dense_optimizer
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.dense_optimizer, lambda s: 1.0)
    trainer.fit()
    assert trainer.step == 3 and torch.bfloat16 in seen  # autocast on CPU
    # 3 optimizer steps of SGD(lr=1) on gradients clipped to norm 1e-4
    moved = torch.sqrt(sum(((p - q) ** 2).sum() for p, q in zip(trainer.dense_params, before)))
    assert 0 < moved.item() <= 3e-4 * 1.01
    assert [p.name for p in trainer.checkpointer.manager.checkpoints()] == ["step-00000003"]
    from recis.train.runlog import read_records

    records = read_records(tmp_path)
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]  # one record per optimizer step
    assert {"loss/click", "loss/click2", "lambda/click", "slack/click", "lr"} <= train[0].keys()
    final = [r for r in records if r["split"] == "eval"][-1]
    assert {"click/auc", "click/logloss", "click/ne", "click/calibration"} <= final.keys()


def test_lr_schedule() -> None:
    cfg = ScheduleConfig(name="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(cfg, 0, 110) == pytest.approx(0.1)
    assert lr_factor(cfg, 9, 110) == pytest.approx(1.0)
    assert lr_factor(cfg, 60, 110) == pytest.approx(0.55)
    assert lr_factor(cfg, 110, 110) == pytest.approx(0.1)
    lin = ScheduleConfig(name="linear", warmup_steps=0)
    assert lr_factor(lin, 50, 100) == pytest.approx(0.5)
    assert lr_factor(ScheduleConfig(), 1000, None) == 1.0


def test_early_stopping() -> None:
    class Stub:  # a TrainerView: what callbacks see of the trainer
        step, epoch, should_stop = 0, 0, False

    stop = EarlyStopping(EarlyStoppingConfig(metric="click/auc", mode="max", patience=2))
    stub = Stub()
    for v in (0.70, 0.72, 0.71, 0.72):
        stop.on_eval(stub, {"click/auc": v})
    assert stub.should_stop and stop.best == 0.72
    from recis.errors import ConfigError

    with pytest.raises(ConfigError, match="early_stopping.metric"):
        stop.on_eval(stub, {"other": 1.0})


def test_run_log_cuts_a_torn_last_line_before_appending(tmp_path) -> None:
    """A writer killed mid-line leaves a line without its newline: the next run's records
    start on their own line, and every line of the file is a whole record."""
    import json

    from recis.train.runlog import RunLogger

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "split": "train"}\n{"step": 2, "spl')
    log = RunLogger(tmp_path, tensorboard=False)
    log.log({"step": 2, "split": "train"})
    log.flush(sync=True)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]


def test_a_failing_on_train_start_restores_the_callers_signal_handlers(small_ctr, tmp_path):
    class Broken(Callback):
        def on_train_start(self, trainer) -> None:
            raise RuntimeError("callback failed")

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    trainer = _trainer(small_ctr, tmp_path, 3)
    trainer.callbacks.append(Broken())
    with pytest.raises(RuntimeError, match="callback failed"):
        trainer.fit()
    assert {s: signal.getsignal(s) for s in before} == before  # recis's handler is gone
