"""One rank of the hashed-engine multi-process test (torchrun, or RANK/WORLD_SIZE set by hand
for one rank). Not collected by pytest.

    python tests/hashed_worker.py OUT --save-ckpt DIR --load-ckpt DIR [--launcher horovod]

Trains DLRM on the hashed engine (one table split by id over the ranks, two kept whole on
one rank each) on the shared global
batches of distributed_worker, rank r on its slice; rank 0 writes the global losses, every
table's live rows (gathered, sorted by id) and the dense state to OUT/run.pt. Then it saves
a DCP checkpoint, takes one more step (OUT/continued.pt), loads the other run's checkpoint
into a fresh model (OUT/loaded.pt), and checks each owner's LRU eviction against a lone
IdMapper fed the ids it owns (OUT/eviction.pt).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import distributed_worker as w
import torch
import torch.distributed as dist
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recis.config import SparseOptimizerConfig, TableConfig
from recis.distributed import checkpoint as dcp_checkpoint
from recis.distributed import init_distributed, shard_model, shutdown
from recis.distributed.collectives import full_state_dict
from recis.distributed.hashed import ShardedHashedEmbeddingCollection, owner_of
from recis.distributed.trainer import DistributedTrainer
from recis.embedding import HashedEmbeddingCollection
from recis.features import SparseFeature
from recis.models.dlrm import DLRM, DLRMConfig
from recis.ops.id_mapper import IdMapper

MODEL = DLRMConfig(
    embedding="hashed",
    tables=[
        TableConfig(name="C0", dim=w.DIM, capacity=400, admission_min_count=2),
        TableConfig(name="C1", dim=w.DIM, capacity=400, pooling="mean"),
        TableConfig(name="C2", dim=w.DIM, capacity=400, eviction="lru"),
    ],
    bottom_mlp=[8, w.DIM],
    top_mlp=[8],
    # SGD: Adagrad's step does not change when every gradient is scaled alike, and the
    # test must see whether the sharded gradients are the global batch's mean
    sparse_optimizer=SparseOptimizerConfig(name="sgd", lr=0.5),
)
SPARSE = SparseOptimizerConfig(name="adagrad", lr=0.1)  # torchrec tables (none here)
# C0 split by id (admission counted by its owners), C1 whole on rank 0, C2 (auto) whole
# on rank 1 over 2 ranks
SHARDING = {"C0": "row_wise", "C1": "table_wise"}


def build(ctx) -> DistributedTrainer:
    torch.manual_seed(0)  # same dense init at every world size
    model = DLRM(MODEL, w.SCHEMA, ctx.device)
    sharded = shard_model(
        model,
        ctx,
        SPARSE,
        per_table=SHARDING,
        data_parallel_dense=ctx.launcher != "horovod",
    )
    data = [w.rank_batch(s, ctx.rank, ctx.world_size) for s in range(w.STEPS)]
    return DistributedTrainer(sharded, data, None, w.TRAIN, ctx)


def hashed(model) -> ShardedHashedEmbeddingCollection:
    (found,) = [m for m in model.modules() if isinstance(m, ShardedHashedEmbeddingCollection)]
    return found


def snapshot(model) -> dict:
    """Rows by id per table, and the dense state (collective)."""
    coll = hashed(model)
    rows = {t: coll.gather_rows(t) for t in coll.order}
    dense = {
        k: v
        for k, v in full_state_dict(model).items()
        if not any(s in k for s in (".rows.", ".sketch.")) and not k.endswith(".step")
    }
    return {"rows": rows, "dense": dense}


def check_owner_eviction(ctx) -> dict:
    """Every rank's LRU table of 8 // W rows holds exactly what a lone IdMapper of that size
    holds after seeing the ids this rank owns, step by step (from every rank's batches)."""
    world, rank = ctx.world_size, ctx.rank
    src = HashedEmbeddingCollection(
        [TableConfig(name="e", dim=4, capacity=8, eviction="lru", evict_fraction=0.0)],
        [SparseFeature(name="e")],
        "cpu",
    )
    group = dist.new_group(backend="gloo") if world > 1 else None
    coll = ShardedHashedEmbeddingCollection(src, rank, world, group)
    lone = IdMapper(math.ceil(8 / world), eviction="lru", evict_fraction=0.0)
    for step in range(1, 7):
        every = torch.randint(0, 40, (world, 5), generator=torch.Generator().manual_seed(step))
        coll(KeyedJaggedTensor(keys=["e"], values=every[rank], lengths=torch.tensor([5])))
        all_ids = every.flatten()
        lone.map(all_ids[owner_of(all_ids, world) == rank], step)
    ids, _ = coll.local.mappers["e"].items()
    want, _ = lone.items()
    return {"got": sorted(ids.tolist()), "want": sorted(want.tolist()), "size": len(ids)}


def concat(kjts: list[KeyedJaggedTensor]) -> KeyedJaggedTensor:
    """Batches of the same keys as one batch, rows of the first first (the global batch)."""
    keys = kjts[0].keys()
    parts = [k.to_dict() for k in kjts]
    return KeyedJaggedTensor(
        keys=keys,
        values=torch.cat([p[f].values() for f in keys for p in parts]),
        lengths=torch.cat([p[f].lengths() for f in keys for p in parts]),
        weights=torch.cat([p[f].weights() for f in keys for p in parts]),
    )


def check_layouts(ctx) -> dict:
    """Tables kept whole on either rank, shared by two features, with mean pooling, weights,
    sequences, admission and LRU eviction (and one split by id): every rank's outputs and
    every row by id equal one plain collection's on the global batch (collective)."""
    import test_hashed_sharded as one  # tables, features, batches of the one-process tests

    world, rank = ctx.world_size, ctx.rank
    group = dist.new_group(backend="gloo") if world > 1 else None
    layouts = {
        "whole": {"a": 0, "b": world - 1, "s": world - 1, "c": 0},
        "mixed": {"a": world - 1, "s": 0, "c": 0},  # b split by id
    }
    # "prefetched": mixed, each step's ids sent to the owners during the step before
    layouts["prefetched"] = layouts["mixed"]
    # the last step's ranks have batches of different sizes (as in padded eval)
    sizes = [[one.B - (2 * r if step == 3 else 0) for r in range(world)] for step in range(4)]
    batches = [[one.batch(100 * s + r, sizes[s][r]) for r in range(world)] for s in range(4)]
    out = {}
    for name, placement in layouts.items():
        sharded = ShardedHashedEmbeddingCollection(
            one.collection("sgd"), rank, world, group, exchange=True, placement=placement
        )
        plain = one.collection("sgd")
        worst = 0.0
        for step in range(4):
            mine = batches[step]
            if name == "prefetched" and step < 3:
                assert sharded.prefetch(batches[step + 1][rank])
            got = one.step_outputs(sharded, mine[rank])
            # the reference: the global batch, each rank's rows weighted as that rank's loss,
            # over W (the sharded gradient is the mean over ranks)
            kt, seqs = plain.lookup(concat(mine))
            pooled, seq = (
                kt.values().split(sizes[step]),
                seqs["fs"].values().split([int(m.to_dict()["fs"].lengths().sum()) for m in mine]),
            )
            outs = [torch.cat([p.flatten(), q.flatten()]) for p, q in zip(pooled, seq)]
            loss = sum((o * torch.linspace(-1, 1, o.numel())).sum() for o in outs) / world
            loss.backward()
            worst = max(worst, float((got - outs[rank].detach()).abs().max()))
        rows = {}
        for t in ("a", "b", "c", "s"):
            ids, weights = sharded.gather_rows(t)
            want_ids, r = plain.mappers[t].items()
            g, j = plain.where[t]
            order = torch.from_numpy(want_ids).argsort()
            want = plain.groups[g].weight(j)[torch.from_numpy(r + 1)].detach()[order]
            same_ids = ids.tolist() == torch.from_numpy(want_ids)[order].tolist()
            rows[t] = (same_ids, float((weights - want).abs().max()) if same_ids else None)
        held = sorted(sharded.whole.tables) if sharded.whole is not None else []
        out[name] = {
            "outputs": worst,
            "rows": rows,
            "held": held,
            "prefetched": sharded.prefetched_lookups,
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--save-ckpt", required=True)
    p.add_argument("--load-ckpt", required=True)
    p.add_argument("--launcher", default="torchrun")
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    ctx = init_distributed(args.launcher, "cpu", "gloo")
    trainer = build(ctx)
    data = list(trainer.train_data)
    # each step with the next batch, as Trainer.fit: its ids are sent to their ranks ahead
    losses = [trainer.train_step(b, n)["loss"] for b, n in zip(data, [*data[1:], None])]
    run = {"losses": losses, **snapshot(trainer.model), "world": ctx.world_size}
    run["placement"] = hashed(trainer.model).placement
    run["prefetched"] = hashed(trainer.model).prefetched_lookups
    run["shm"] = hashed(trainer.model).shm is not None
    dcp_checkpoint.save(args.save_ckpt, trainer.model, trainer.optimizer, {"step": w.STEPS})
    next_batch = w.rank_batch(w.STEPS, ctx.rank, ctx.world_size)
    continued = {"loss": trainer.train_step(next_batch)["loss"], **snapshot(trainer.model)}
    w.wait_for(Path(args.load_ckpt) / "meta.json")
    fresh = build(ctx)
    meta = dcp_checkpoint.load(args.load_ckpt, fresh.model, fresh.optimizer)
    restored = snapshot(fresh.model)
    loaded = {"meta": meta, "restored": restored, "loss": fresh.train_step(next_batch)["loss"]}
    loaded.update(snapshot(fresh.model))
    eviction = check_owner_eviction(ctx)
    every: list = [None] * ctx.world_size
    dist.all_gather_object(every, eviction)
    layouts: list = [None] * ctx.world_size
    dist.all_gather_object(layouts, check_layouts(ctx))
    if ctx.rank == 0:
        for name, obj in (("run", run), ("continued", continued), ("loaded", loaded)):
            torch.save(obj, out / f"{name}.pt")
        torch.save(every, out / "eviction.pt")
        torch.save(layouts, out / "layouts.pt")
    del trainer, fresh  # their models' DDP holds the process group: released before shutdown
    shutdown(ctx)


if __name__ == "__main__":
    main()
