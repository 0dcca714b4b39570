"""Trainer.evaluate over 2 gloo ranks equals one process over all the data (GAUC included)."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recis.config import TaskConfig, TrainConfig
from recis.io.batch import Batch
from recis.train import Trainer


class Tiny(nn.Module):
    """dense ``[B, 4]`` -> ``{"click": [B], "buy": [B]}``."""

    def __init__(self) -> None:
        super().__init__()
        self.tasks = ["click", "buy"]
        self.lin = nn.Linear(4, 2)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        out = self.lin(batch.dense)
        return {"click": out[:, 0], "buy": out[:, 1]}


def _batches() -> list[Batch]:
    g = torch.Generator().manual_seed(0)
    empty = KeyedJaggedTensor.from_lengths_sync(
        keys=[], values=torch.empty(0, dtype=torch.int64), lengths=torch.empty(0, dtype=torch.int64)
    )
    out = []
    for _ in range(6):
        x = torch.randn(200, 4, generator=g)
        labels = {
            "click": (torch.rand(200, generator=g) < torch.sigmoid(x[:, 0])).float(),
            "buy": (torch.rand(200, generator=g) < torch.sigmoid(-x[:, 1])).float(),
        }
        users = torch.randint(0, 30, (200,), generator=g)
        out.append(Batch(sparse=empty, dense=x, labels=labels, extras={"user_id": users}))
    return out


def _trainer(batches: list[Batch]) -> Trainer:
    torch.manual_seed(0)
    cfg = TrainConfig(
        progress=False,
        tasks=[TaskConfig("click", group_column="user_id"), TaskConfig("buy")],
    )
    return Trainer(Tiny(), [], batches, cfg)


def _rank(rank: int, port: int, queue) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        mine = _batches()[rank::2]  # each rank reads its own shard of the eval data
        queue.put((rank, _trainer(mine).evaluate()))
    finally:
        dist.destroy_process_group()


def test_evaluate_is_global_across_ranks() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, port, queue)) for r in (0, 1)]
    for p in procs:
        p.start()
    got = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    want = _trainer(_batches()).evaluate()
    assert {"click/gauc", "click/auc", "buy/auc", "buy/ne"} <= want.keys()
    assert got[0] == pytest.approx(want) and got[1] == pytest.approx(want)
    shard = _trainer(_batches()[0::2]).evaluate()
    assert shard["click/auc"] != pytest.approx(want["click/auc"])
