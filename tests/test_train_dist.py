"""Trainer.evaluate over 2 gloo ranks equals one process over all the data (GAUC included).

The ranks are fresh interpreters (not forks of pytest, whose torch thread pool
may already be running), launched like torchrun would: one process per rank.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

# Shared by the ranks and the single-process reference.
_COMMON = r"""
import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from recis.config import TaskConfig, TrainConfig
from recis.io.batch import Batch
from recis.train import Trainer

torch.set_num_threads(1)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.tasks = ["click", "buy"]
        self.lin = nn.Linear(4, 2)

    def forward(self, batch):  # dense [B, 4] -> {task: [B]}
        out = self.lin(batch.dense)
        return {"click": out[:, 0], "buy": out[:, 1]}


def batches():
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


def evaluate(data):
    torch.manual_seed(0)
    cfg = TrainConfig(
        progress=False, tasks=[TaskConfig("click", group_column="user_id"), TaskConfig("buy")]
    )
    return Trainer(Tiny(), [], data, cfg).evaluate()
"""

_RANK = r"""
import json, sys
import torch.distributed as dist

rank, port = int(sys.argv[1]), int(sys.argv[2])
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
result = evaluate(batches()[rank::2])  # each rank reads its own shard of the eval data
dist.destroy_process_group()
print("RESULT", json.dumps(result))
"""


def test_evaluate_is_global_across_ranks() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _COMMON + _RANK, str(rank), str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    got = []
    for p in procs:
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0
        got.append(json.loads(out.split("RESULT ", 1)[1]))
    scope: dict = {}
    exec(_COMMON, scope)
    want = scope["evaluate"](scope["batches"]())
    assert {"click/gauc", "click/auc", "buy/auc", "buy/ne"} <= want.keys()
    assert got[0] == pytest.approx(want) and got[1] == pytest.approx(want)
    shard = scope["evaluate"](scope["batches"]()[0::2])
    assert shard["click/auc"] != pytest.approx(want["click/auc"])


_OBJECTIVE = r"""
import json, sys
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from recis.config import PriorityConfig, TaskConfig, TrainConfig
from recis.distributed.context import DistContext, shutdown
from recis.distributed.trainer import DistributedTrainer

CFG = TrainConfig(
    progress=False,
    objective="priority",
    # damping 0: the damped term reads each rank's own batch loss in the forward
    priority=PriorityConfig(stage_steps=2, damping=0.0),
    tasks=[TaskConfig("click", priority=0, tolerance=0.01), TaskConfig("buy", priority=1)],
    dense_optimizer={"name": "sgd", "lr": 0.5},
)


def train(trainer, data):
    losses = [trainer.train_step(b)["loss"] for b in data]
    return {"losses": losses, "objective": trainer.objective.state_dict()}


if sys.argv[1] == "one":  # one process on the global batches (both ranks' rows)
    from recis.io.batch import Batch
    from recis.train import Trainer

    both = [
        Batch(
            sparse=a.sparse,
            dense=torch.cat([a.dense, b.dense]),
            labels={t: torch.cat([a.labels[t], b.labels[t]]) for t in a.labels},
        )
        for a, b in zip(batches()[0::2], batches()[1::2])
    ]
    torch.manual_seed(0)
    print("RESULT", json.dumps(train(Trainer(Tiny(), both, None, CFG), both)))
else:
    rank, port = int(sys.argv[1]), int(sys.argv[2])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = DistributedDataParallel(Tiny())
    ctx = DistContext(rank=rank, world_size=2, backend="gloo", launcher="torchrun")
    mine = batches()[rank::2]  # step s: rank 0 has rows of batch 2s, rank 1 of batch 2s+1
    result = train(DistributedTrainer(model, mine, None, CFG, ctx), mine)
    del model  # DDP holds the process group: released before shutdown
    shutdown(ctx)
    print("RESULT", json.dumps(result))
"""


def test_priority_objective_updates_from_global_losses_on_every_rank() -> None:
    """Two ranks' Lagrangian multipliers and references move as one process's on the
    global batches (each rank used to update them from its own losses)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = _COMMON + _OBJECTIVE
    procs = [
        subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
        for args in (["0", str(port)], ["1", str(port)], ["one"])
    ]
    got = []
    for p in procs:
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0
        got.append(json.loads(out.split("RESULT ", 1)[1]))
    rank0, rank1, one = got
    assert rank0["losses"] == pytest.approx(one["losses"], abs=1e-6)
    assert rank0["objective"] == rank1["objective"]
    for key in ("ema", "ref", "lambda"):
        assert rank0["objective"][key] == pytest.approx(one["objective"][key], abs=1e-6)
    assert one["objective"]["ema_n"] == 3 and "click" in one["objective"]["ref"]
