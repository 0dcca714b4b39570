"""One rank of the multi-process tests (run by torchrun, horovodrun, or with RANK/WORLD_SIZE
set by hand for a single rank). Not collected by pytest.

    python tests/distributed_worker.py OUT --kinds table_wise,row_wise [--launcher torchrun]
        [--save-ckpt DIR] [--load-ckpt DIR --expect FILE]

For each sharding kind: build DLRM (tiny), shard it, train STEPS steps on the same global
batches (rank r takes rows [r*G/W, (r+1)*G/W) of each), and have rank 0 write the global
losses and the whole final state to OUT/<kind>.pt.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recis.config import SparseOptimizerConfig, TableConfig, TrainConfig
from recis.distributed import checkpoint as dcp_checkpoint
from recis.distributed import init_distributed, shard_model, shutdown
from recis.distributed.collectives import full_state_dict
from recis.distributed.hashed import shard_hashed
from recis.distributed.trainer import DistributedTrainer
from recis.features import Schema
from recis.io.batch import Batch
from recis.models.dlrm import DLRM, DLRMConfig

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve()
BIN = Path(sys.executable).parent
TORCHRUN = BIN / "torchrun"
F, G, STEPS, DIM = 3, 16, 4, 8
SCHEMA = Schema(
    dense=[{"name": "I0"}, {"name": "I1"}],
    sparse=[{"name": f"C{i}"} for i in range(F)],
    labels=[{"name": "click", "column": "label"}],
)
MODEL = DLRMConfig(
    embedding="modulo",  # torchrec EBCs: the per-table sharding plans (hashed: test_hashed_dist)
    tables=[TableConfig(name=f"C{i}", dim=DIM, capacity=40 + 20 * i) for i in range(F)],
    bottom_mlp=[8, DIM],
    top_mlp=[8],
)
TRAIN = TrainConfig(
    dense_optimizer={"name": "adam", "lr": 0.01},
    sparse_optimizer={"name": "adagrad", "lr": 0.1},
    progress=False,
)


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lengths [F, G], ids per feature [F, G, 2], dense [G, 2], labels [G]) for ``step``."""
    g = torch.Generator().manual_seed(1000 + step)
    lengths = torch.randint(0, 3, (F, G), generator=g)
    ids = torch.randint(0, 1000, (F, G, 2), generator=g)
    dense = torch.randn(G, 2, generator=g)
    labels = (torch.rand(G, generator=g) < 0.4).float()
    return lengths, ids, dense, labels


def rank_batch(step: int, rank: int, world: int) -> Batch:
    """Rows ``[rank * G / world, (rank + 1) * G / world)`` of global batch ``step``."""
    lengths, ids, dense, labels = global_batch(step)
    lo, hi = rank * G // world, (rank + 1) * G // world
    values = [ids[f, r, : lengths[f, r]] for f in range(F) for r in range(lo, hi)]
    kjt = KeyedJaggedTensor(
        keys=[f"C{i}" for i in range(F)],
        values=torch.cat(values),
        lengths=lengths[:, lo:hi].reshape(-1),
    )
    return Batch(sparse=kjt, dense=dense[lo:hi], labels={"click": labels[lo:hi]})


def parse_kind(kind: str) -> tuple[str, dict[str, str]]:
    """``row_wise`` -> all tables row-wise; ``C0=data_parallel+C1=row_wise+auto`` -> mixed."""
    per_table, default = {}, "table_wise"
    for part in kind.split("+"):
        if "=" in part:
            name, k = part.split("=")
            per_table[name] = k
        else:
            default = part
    return default, per_table


def build(ctx, kind: str) -> DistributedTrainer:
    torch.manual_seed(0)  # same unsharded init at every world size
    model = DLRM(MODEL, SCHEMA, ctx.device)
    default, per_table = parse_kind(kind)
    sharded = shard_model(
        model,
        ctx,
        SparseOptimizerConfig(name="adagrad", lr=0.1),
        default=default,
        per_table=per_table,
        data_parallel_dense=ctx.launcher != "horovod",
    )
    data = [rank_batch(s, ctx.rank, ctx.world_size) for s in range(STEPS)]
    return DistributedTrainer(sharded, data, None, TRAIN, ctx)


def single_process_reference() -> dict:
    """Losses and final state of the plain single-process Trainer on the global batches."""
    from recis.train import Trainer

    torch.manual_seed(0)
    model = DLRM(MODEL, SCHEMA, torch.device("cpu"))
    batches = [rank_batch(s, 0, 1) for s in range(STEPS)]
    trainer = Trainer(model, batches, None, TRAIN)
    losses = [trainer.train_step(b)["loss"] for b in batches]
    return {"losses": losses, "state": {k: v.clone() for k, v in model.state_dict().items()}}


def assert_trained(state: dict) -> None:
    """Training moved every table away from its start (so equality checks have teeth)."""
    torch.manual_seed(0)
    init = DLRM(MODEL, SCHEMA, torch.device("cpu")).state_dict()
    for name in (f"sparse_arch.ebc.embedding_bags.C{i}.weight" for i in range(F)):
        assert (state[name] - init[name]).abs().max() > 1e-3, name


def wait_for(path: Path, timeout: float = 300.0) -> None:
    """Another process group writes ``path``: poll for it."""
    t0 = time.time()
    while not path.exists():
        if time.time() - t0 > timeout:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])  # horovodrun finds python
    return env


def single_rank_env() -> dict[str, str]:
    """What torchrun would set for a world of one process (the worker started directly)."""
    return {
        **worker_env(),
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }


def spawn(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a launcher or worker from the repository root, output captured."""
    return subprocess.Popen(
        [str(a) for a in args],
        cwd=ROOT,
        env=env or worker_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a hung launch is killed whole
    )


def run_all_in(start, root: Path) -> Path:  # noqa: ANN001
    """Run ``start(dir)``'s processes to the end in a fresh ``dir`` under ``root``; returns
    ``dir``. No retry: a process that dies by a signal fails the test (the SIGABRT at the exit
    of a finished rank, "terminate called without an active exception", came from read-ahead
    threads still running at interpreter exit; recis.io.prefetch now joins them first)."""
    tmp = root / "run"
    tmp.mkdir()
    run_all(start(tmp))
    return tmp


def run_all(procs: list[subprocess.Popen], timeout: float = 600) -> list[str]:
    """Wait for every process; a failure shows the end of its output."""
    outs = []
    deadline = time.time() + timeout
    for p in procs:
        try:
            out, _ = p.communicate(timeout=max(deadline - time.time(), 1))
        except subprocess.TimeoutExpired:
            for q in procs:
                if q.poll() is None:
                    os.killpg(q.pid, 9)
            out, _ = p.communicate()
            raise AssertionError(f"{p.args} timed out after {timeout} s:\n{out[-6000:]}") from None
        if p.returncode != 0:
            for q in procs:  # the peer may be waiting for this one's checkpoint
                if q.poll() is None:
                    os.killpg(q.pid, 9)
        assert p.returncode == 0, f"{p.args} failed:\n{out[-6000:]}"
        outs.append(out)
    return outs


def check_even_batches(rank: int, world: int) -> None:
    """Rank r holds 2r items (rank 0 none): training stops with the shortest rank, eval
    pads every rank to the longest, rank 0 with a batch borrowed from rank 1."""
    from recis.distributed.collectives import even_batches

    mine = [f"r{rank}b{i}" for i in range(2 * rank)]
    assert list(even_batches(mine)) == []
    padded = list(even_batches(mine, pad=True))
    assert len(padded) == 2 * (world - 1), padded
    real = [b for b, ok in padded if ok]
    assert real == mine, (real, mine)
    if rank == 0 and world > 1:
        assert padded[0] == ("r1b0", False), padded


def check_reduce_scatter(rank: int, world: int) -> None:
    """recis's gloo reduce-scatter (an all-to-all and a local sum, used for row-wise pooled
    embeddings) gives torch's result: bitwise with 2 ranks (a + b in either order)."""
    import torch.distributed as dist

    from recis.distributed import gloo_comms

    g = torch.Generator().manual_seed(7 + rank)
    x = torch.randn(world * 6, 5, generator=g)
    want, got = torch.empty(6, 5), torch.full((6, 5), float("nan"))
    dist.reduce_scatter_tensor(want, x)
    gloo_comms.reduce_scatter_tensor(got, x, async_op=True).wait()
    if world <= 2:
        assert torch.equal(got, want), (got - want).abs().max()
    torch.testing.assert_close(got, want)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--kinds", default="table_wise")
    p.add_argument("--launcher", default="torchrun")
    p.add_argument("--save-ckpt", default=None, help="save the first kind's final state here")
    p.add_argument("--load-ckpt", default=None, help="load this checkpoint into a fresh model")
    p.add_argument("--load-kind", default="row_wise", help="sharding to load the checkpoint into")
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    ctx = init_distributed(args.launcher, "cpu", "gloo")
    for i, kind in enumerate(args.kinds.split(",")):
        trainer = build(ctx, kind)
        losses = [trainer.train_step(b)["loss"] for b in trainer.train_data]
        state = full_state_dict(trainer.model)
        if ctx.rank == 0:
            torch.save({"losses": losses, "state": state}, out / f"{kind}.pt")
        if i == 0 and args.save_ckpt:
            dcp_checkpoint.save(args.save_ckpt, trainer.model, trainer.optimizer, {"step": STEPS})
            # the step a resumed run must reproduce (same model and optimizer state)
            loss = trainer.train_step(rank_batch(STEPS, ctx.rank, ctx.world_size))["loss"]
            state = full_state_dict(trainer.model)
            if ctx.rank == 0:
                torch.save({"loss": loss, "state": state}, out / "continued.pt")
    check_even_batches(ctx.rank, ctx.world_size)
    check_reduce_scatter(ctx.rank, ctx.world_size)
    if args.load_ckpt:
        wait_for(Path(args.load_ckpt) / "meta.json")
        trainer = build(ctx, args.load_kind)
        meta = dcp_checkpoint.load(args.load_ckpt, trainer.model, trainer.optimizer)
        restored = full_state_dict(trainer.model)
        # one more step after loading: exercises the restored optimizer state too
        loss = trainer.train_step(rank_batch(STEPS, ctx.rank, ctx.world_size))["loss"]
        state = full_state_dict(trainer.model)
        if ctx.rank == 0:
            torch.save(
                {"meta": meta, "restored": restored, "state": state, "loss": loss},
                out / "loaded.pt",
            )
    del trainer  # its model's DDP holds the process group: released before shutdown
    shutdown(ctx)


TABLES = [("C1", 20), ("C2", 60), ("C3", 200), ("C4", 600)]


def cli_config(tmp: Path, name: str, data: Path, embedding: str = "modulo") -> Path:
    """A small DLRM run config on ``data``. ``modulo``: torchrec tables with a mixed
    sharding plan; ``hashed``: the hashed engine (C1 split by id, the others kept whole by
    ``auto``), tables big enough that no id is ever refused a row."""
    if embedding == "hashed":
        tables = [{"name": t, "dim": 8, "capacity": 1000} for t, _ in TABLES]
        dist_cfg: dict = {"sharding": {"C1": "row_wise"}}
    else:
        tables = [{"name": t, "dim": 8, "capacity": c} for t, c in TABLES]
        dist_cfg = {
            "default_sharding": "row_wise",
            "sharding": {"C1": "table_wise", "C2": "column_wise"},
        }
    cfg = {
        "run_dir": str(tmp / name),
        "device": "cpu",
        "seed": 0,
        "threads": 1,
        "data": {
            "train": str(data / "train"),
            "eval": str(data / "eval"),
            "batch_size": 100,
            "eval_batch_size": 300,
            "shuffle": True,
            "schema": {
                "labels": [{"name": "click", "column": "label"}],
                "dense": [{"name": "I1", "transform": "log"}, {"name": "I2", "transform": "log"}],
                "sparse": [{"name": t} for t, _ in TABLES],
            },
        },
        "model": {
            "name": "dlrm",
            "embedding": embedding,
            "bottom_mlp": [8, 8],
            "top_mlp": [16],
            "tables": tables,
        },
        "train": {
            "epochs": 3,
            "dense_optimizer": {"name": "adam", "lr": 0.01},
            "sparse_optimizer": {"name": "adagrad", "lr": 0.05},
            "log_every": 2,
            "checkpoint_every": 2,
            "progress": False,
        },
        "distributed": dist_cfg,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def final_model(run_dir: Path, config: Path) -> torch.nn.Module:
    """The run's final checkpoint loaded into a plain, unsharded model."""
    from recis.config import load_config
    from recis.distributed import checkpoint as dcp_checkpoint
    from recis.models import build_model

    cfg = load_config(config)
    model = build_model(cfg.model, cfg.data.schema_, "cpu")
    shard_hashed(model)  # hashed tables are saved by id: their one-process sharded form reads it
    dcp_checkpoint.load(run_dir / "checkpoints" / "final", model)
    return model


def cli_main(argv: list[str]) -> int:
    """``recis`` CLI, with a fault injected when RECIS_TEST_DIE_AT_STEP is set: rank 1 dies
    right after that step, once (a marker file remembers it across torchrun's restart)."""
    from recis import cli

    die_at = int(os.environ.get("RECIS_TEST_DIE_AT_STEP", "0"))
    if os.environ.get("RECIS_TEST_STACKS_AFTER"):  # debugging hangs: dump every thread's stack
        import faulthandler

        faulthandler.dump_traceback_later(float(os.environ["RECIS_TEST_STACKS_AFTER"]))
    marker = Path(os.environ.get("RECIS_TEST_DIE_MARKER", "/nonexistent/marker"))
    if die_at and int(os.environ.get("RANK", "0")) == 1 and not marker.exists():
        step_once = DistributedTrainer.train_step

        def train_step(self: DistributedTrainer, batch: Batch, *ahead: Batch | None) -> Any:
            out = step_once(self, batch, *ahead)
            if self.step == die_at:
                marker.touch()
                os._exit(1)  # a crash: no cleanup, no barrier
            return out

        DistributedTrainer.train_step = train_step  # type: ignore[method-assign]
    return cli.main(argv)


if __name__ == "__main__":
    if sys.argv[1] == "cli":
        sys.exit(cli_main(sys.argv[2:]))
    main()
