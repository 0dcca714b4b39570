"""TrainPipeline: the ahead stage (PreparesAhead) of batch N+1 during step N, the reader's
position after the batch read ahead, and the data Protocols the trainer relies on."""

from __future__ import annotations

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recis.features import DenseFeature, LabelSpec, Schema, SparseFeature
from recis.io import ParquetReader
from recis.io.batch import Batch
from recis.synthetic import dense_names, sparse_names
from recis.train import PreparesAhead, TrainPipeline
from recis.train.pipeline import BadRowCounts, EpochRestart, ResumableData, ahead_stages

SCHEMA = Schema(
    dense=[DenseFeature(n) for n in dense_names()[:2]],
    sparse=[SparseFeature(n) for n in sparse_names()[:2]],
    labels=[LabelSpec("click", column="label")],
)


class Ahead(nn.Module):
    """A model part with an ahead stage: records the features it was handed."""

    def __init__(self, active: bool = True) -> None:
        super().__init__()
        self.active = active
        self.seen: list[KeyedJaggedTensor] = []

    @property
    def sends_ahead(self) -> bool:
        return self.active

    def prefetch(self, kjt: KeyedJaggedTensor) -> bool:
        self.seen.append(kjt)
        return True


def _batches(n: int) -> list[Batch]:
    out = []
    for i in range(n):
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=["a"], values=torch.tensor([i, i + 1]), lengths=torch.tensor([1, 1])
        )
        out.append(Batch(kjt, torch.full((2, 1), float(i)), {"click": torch.zeros(2)}))
    return out


def test_the_ahead_stage_runs_on_the_next_batch_before_this_one_trains() -> None:
    ahead = Ahead()
    model = nn.Sequential(nn.Linear(1, 1), ahead, Ahead(active=False))
    assert ahead_stages(model) == [ahead] and isinstance(ahead, PreparesAhead)
    data = _batches(3)
    pipeline = TrainPipeline(data, model, torch.device("cpu"))
    pairs = list(pipeline.epoch())
    assert [(a is data[i], b is (data + [None])[i + 1]) for i, (a, b) in enumerate(pairs)] == [
        (True, True)
    ] * 3
    first = pipeline.prepare(data[0], data[1])
    assert torch.equal(first.dense, data[0].dense) and len(ahead.seen) == 1
    assert torch.equal(ahead.seen[0].values(), data[1].sparse.values())
    second = pipeline.prepare(data[1], data[2])
    # the batch moved (and prepared) during the step before is the one trained on now
    assert second.sparse is ahead.seen[0] and len(ahead.seen) == 2
    pipeline.prepare(data[2])
    assert len(ahead.seen) == 2  # nothing after the last batch


def test_without_an_ahead_stage_nothing_is_read_ahead() -> None:
    data = _batches(3)
    pipeline = TrainPipeline(data, nn.Sequential(Ahead(active=False)), torch.device("cpu"))
    assert [b for _, b in pipeline.epoch()] == [None, None, None]
    # a plain list: no position, no skipped rows, nothing to restart
    assert not pipeline.resumable and pipeline.position() is None
    assert pipeline.bad_rows_report() == {} and pipeline.batches_per_epoch() == 3


def test_stopping_early_gives_the_batch_read_ahead_back(small_ctr) -> None:
    path, _ = small_ctr
    reader = ParquetReader(path / "train", SCHEMA, 4096, shuffle=True, seed=3)
    assert all(isinstance(reader, p) for p in (ResumableData, BadRowCounts, EpochRestart))
    pipeline = TrainPipeline(reader, nn.Sequential(Ahead()), torch.device("cpu"))
    twin = ParquetReader(path / "train", SCHEMA, 4096, shuffle=True, seed=3)
    twin_it = iter(twin)
    batches = pipeline.epoch()
    for i, (batch, upcoming) in enumerate(batches):
        want = next(twin_it)
        assert torch.equal(batch.dense, want.dense) and upcoming is not None
        # the position after the batch training, not after the one read ahead
        assert pipeline.position() == twin.state_dict()
        if i == 1:
            batches.close()
            break
    assert reader.state_dict() == twin.state_dict()
    assert torch.equal(next(iter(reader)).dense, next(twin_it).dense)
