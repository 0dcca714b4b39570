"""Sharding a model's embedding tables with torchrec's DistributedModelParallel.

Each table gets a sharding type from config (``distributed.sharding`` per table,
``distributed.default_sharding`` for the rest):

============== =================================================================
table_wise     the whole table on one rank (greedy placement by size)
row_wise       rows split in contiguous blocks over all ranks; each id has one owner
column_wise    the embedding dim split over all ranks (dim must divide evenly)
data_parallel  replicated on every rank, gradients all-reduced like dense params
auto           torchrec's ``EmbeddingShardingPlanner`` chooses
============== =================================================================

On CPU the planner refuses row-wise (and table-row-wise), so every explicit choice is
built by hand with ``construct_module_sharding_plan(..., device_type=...)``; only
``auto`` tables go through the planner (its plan is computed on rank 0 and broadcast).

Sharded tables use fbgemm's fused kernels: the sparse optimizer runs inside backward
(``fused_params``, resolved by :mod:`recis.optim.spec`, which refuses an optimizer or a
weight decay fbgemm cannot run on the device); data-parallel tables get the same named
optimizer as a torch optimizer (:mod:`recis.distributed.optim`). torchrec divides
embedding gradients by the world size in its all-to-all backward, matching the
data-parallel mean over the global batch, so N ranks on N slices of a global batch
take the same step as one process on the whole batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.tensor import DTensor, distribute_tensor
from torchrec import EmbeddingBagCollection, EmbeddingCollection
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.sharding_plan import (
    column_wise,
    construct_module_sharding_plan,
    data_parallel,
    row_wise,
    table_wise,
)
from torchrec.distributed.types import (
    EmbeddingModuleShardingPlan,
    ModuleSharder,
    ShardingPlan,
    ShardingType,
)

from recis.config import SparseOptimizerConfig
from recis.errors import ConfigError
from recis.optim.spec import fused_params

from . import gloo_comms
from .context import DistContext
from .hashed import HASHED_SHARDING, check_hashed_kind, hashed_collections, shard_hashed

SHARDING_TYPES = ("table_wise", "row_wise", "column_wise", "data_parallel", "auto")
_FUSED = "fused"
_EMBEDDING_MODULES = (EmbeddingBagCollection, EmbeddingCollection)


def sharders(
    cfg: SparseOptimizerConfig, device: torch.device, fused: bool = True
) -> list[ModuleSharder[nn.Module]]:
    """torchrec's sharders with fbgemm's in-backward optimizer for ``cfg``
    (:func:`recis.optim.spec.fused_params`, which refuses what fbgemm cannot run on
    ``device``); ``fused=False``: no table is fused-sharded (all data-parallel), so
    ``cfg`` runs as a torch optimizer instead and is not checked against fbgemm."""
    fp = fused_params(cfg, device) if fused else None
    return [
        EmbeddingBagCollectionSharder(fused_params=fp),
        EmbeddingCollectionSharder(fused_params=fp),
    ]


def _tables(module: nn.Module) -> list[Any]:
    if isinstance(module, EmbeddingBagCollection):
        return list(module.embedding_bag_configs())
    if isinstance(module, EmbeddingCollection):
        return list(module.embedding_configs())
    raise TypeError(f"{type(module).__name__} is not a torchrec embedding collection")


def embedding_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Module path -> torchrec embedding collection, for every collection in ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, _EMBEDDING_MODULES)}


def table_sharding(model: nn.Module, default: str, per_table: dict[str, str]) -> dict[str, str]:
    """Sharding kind of every table in ``model`` (torchrec and hashed engine); unknown
    table names and kinds a table cannot take are config errors."""
    names = [t.name for m in embedding_modules(model).values() for t in _tables(m)]
    hashed = [t for _, c in hashed_collections(model) for t in c.tables]
    for name, kind in per_table.items():
        if name in hashed:
            check_hashed_kind(name, kind)
        elif name not in names:
            raise ConfigError(
                f"distributed.sharding.{name}: no table named {name!r} (tables: {names + hashed})"
            )
        elif kind not in SHARDING_TYPES:
            raise ConfigError(f"distributed.sharding.{name}: {kind!r} not in {SHARDING_TYPES}")
    unlisted = [t for t in hashed if t not in per_table]
    if unlisted and default not in HASHED_SHARDING:
        raise ConfigError(
            f"distributed.default_sharding: {default!r} does not apply to the hashed engine's "
            f"tables {unlisted}: use one of {HASHED_SHARDING}, or give them their own "
            "distributed.sharding"
        )
    return {n: per_table.get(n, default) for n in names + hashed}


def build_plan(
    model: nn.Module,
    ctx: DistContext,
    kinds: dict[str, str],
    module_sharders: list[ModuleSharder[nn.Module]],
) -> ShardingPlan:
    """A :class:`ShardingPlan` giving each table of ``model`` the sharding in ``kinds``."""
    world, device_type = ctx.world_size, ctx.device.type
    sharder_of = {s.module_type: s for s in module_sharders}
    auto_plan = (
        _planner_plan(model, ctx, kinds, module_sharders) if "auto" in kinds.values() else None
    )
    load = [0] * world  # bytes placed per rank by table_wise, for greedy balance
    plan: dict[str, EmbeddingModuleShardingPlan] = {}
    for path, module in embedding_modules(model).items():
        per_param: dict[str, Any] = {}
        for t in sorted(_tables(module), key=lambda t: -t.num_embeddings * t.embedding_dim):
            kind = kinds[t.name]
            if kind in ("table_wise", "auto"):  # auto: replaced by the planner's choice below
                rank = min(range(world), key=lambda r: load[r])
                load[rank] += t.num_embeddings * t.embedding_dim
                per_param[t.name] = table_wise(rank=rank, compute_kernel=_FUSED)
            elif kind == "row_wise":
                per_param[t.name] = row_wise(compute_kernel=_FUSED)
            elif kind == "column_wise":
                if t.embedding_dim % world:
                    raise ConfigError(
                        f"distributed.sharding.{t.name}: column_wise needs dim {t.embedding_dim} "
                        f"divisible by world size {world}"
                    )
                per_param[t.name] = column_wise(ranks=list(range(world)), compute_kernel=_FUSED)
            elif kind == "data_parallel":
                per_param[t.name] = data_parallel()
        module_plan = construct_module_sharding_plan(
            module,
            per_param,
            sharder=sharder_of[type(module)],
            local_size=ctx.local_size,
            world_size=world,
            device_type=device_type,
        )
        if auto_plan is not None:
            chosen = auto_plan.plan.get(path)
            for t in _tables(module):
                if kinds[t.name] == "auto":
                    module_plan[t.name] = chosen[t.name]
        plan[path] = module_plan
    return ShardingPlan(plan)


def _planner_plan(
    model: nn.Module,
    ctx: DistContext,
    kinds: dict[str, str],
    module_sharders: list[ModuleSharder[nn.Module]],
) -> ShardingPlan:
    """torchrec's planner over the whole model; tables not marked ``auto`` are pinned to a
    type the CPU planner accepts and replaced by the manual plan afterwards."""
    fixed = {
        "table_wise": ShardingType.TABLE_WISE.value,
        "row_wise": ShardingType.TABLE_WISE.value,  # placeholder: CPU planner refuses row-wise
        "column_wise": ShardingType.COLUMN_WISE.value,
        "data_parallel": ShardingType.DATA_PARALLEL.value,
    }
    constraints = {
        name: ParameterConstraints(sharding_types=[fixed[kind]])
        for name, kind in kinds.items()
        if kind != "auto"
    }
    topology = Topology(
        world_size=ctx.world_size,
        compute_device=ctx.device.type,
        local_world_size=ctx.local_size,
    )
    planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints)
    return planner.collective_plan(model, module_sharders, dist.GroupMember.WORLD)


def shard_model(
    model: nn.Module,
    ctx: DistContext,
    sparse_optimizer: SparseOptimizerConfig,
    default: str = "auto",
    per_table: dict[str, str] | None = None,
    data_parallel_dense: bool = True,
) -> DistributedModelParallel:
    """Wrap ``model`` in DistributedModelParallel with the configured per-table plan.

    Hashed collections (:class:`~recis.embedding.HashedEmbeddingCollection`) are first
    replaced by :class:`~recis.distributed.hashed.ShardedHashedEmbeddingCollection`
    (ids split over all ranks, exchanged on a process group of their own); torchrec
    collections get the per-table plan.

    Args:
        model: an unsharded model holding torchrec embedding collections (on ``ctx.device``).
        ctx: this process's context; its process group carries the embedding all-to-alls.
        sparse_optimizer: run inside backward by fbgemm on the sharded tables (data-parallel
            ones: by the trainer's torch optimizer of the same name).
        default: sharding for tables not in ``per_table``.
        per_table: table name -> sharding type.
        data_parallel_dense: wrap dense parameters in DDP (torchrun); False under Horovod,
            whose ``DistributedOptimizer`` reduces them instead.
    """
    gloo_comms.install()  # row-wise output dist on gloo: all-to-alls, not all-reduce + slice
    kinds = table_sharding(model, default, per_table or {})
    # hashed collections: tables whole on one rank or split by id (recis.distributed.hashed)
    hashed = {t for _, c in hashed_collections(model) for t in c.tables}
    if hashed:
        group = dist.new_group(backend=ctx.backend) if ctx.world_size > 1 else None
        shard_hashed(model, ctx.rank, ctx.world_size, group, kinds)
        kinds = {t: k for t, k in kinds.items() if t not in hashed}
    # fused (fbgemm) unless every table is replicated; auto: the planner may shard any
    fused = any(k != "data_parallel" for k in kinds.values())
    module_sharders = sharders(sparse_optimizer, ctx.device, fused)
    plan = build_plan(model, ctx, kinds, module_sharders)
    # Sharded tables are re-initialized by torchrec, rank by rank; copy the unsharded
    # weights in so that a run's start does not depend on the world size or the plan.
    initial = {
        k: v.detach().clone()
        for k, v in model.state_dict().items()
        if any(k.startswith(p + ".") for p in embedding_modules(model))
    }
    dmp = DistributedModelParallel(
        model,
        device=ctx.device,
        plan=plan,
        sharders=module_sharders,
        init_data_parallel=data_parallel_dense,
    )
    copy_into_shards(dmp, initial)
    return dmp


@torch.no_grad()
def copy_into_shards(model: nn.Module, full: dict[str, torch.Tensor]) -> None:
    """Copy whole tensors ``full`` (state-dict names) into the matching local shards of
    ``model`` (ShardedTensor / DTensor / plain tensors)."""
    for name, value in model.state_dict().items():
        if name not in full:
            continue
        src = full[name]
        if isinstance(value, ShardedTensor):
            for shard in value.local_shards():
                index = tuple(
                    slice(o, o + n)
                    for o, n in zip(shard.metadata.shard_offsets, shard.tensor.shape)
                )
                shard.tensor.copy_(src[index])
        elif isinstance(value, DTensor):
            value.to_local().copy_(
                distribute_tensor(src, value.device_mesh, value.placements).to_local()
            )
        else:
            value.copy_(src)
