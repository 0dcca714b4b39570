"""The one place where an optimizer config becomes an optimizer.

A run declares its optimizers once (docs/config.md, "Optimizers"):
``train.sparse_optimizer`` for embedding rows (a table may override it with
``model.tables[i].optimizer``) and ``train.dense_optimizer`` for everything else. Each
name has one weight-decay coupling, as in torch: ``adamw`` decays decoupled
(``w *= 1 - lr * weight_decay``), every other name adds L2 to the gradient
(``g += weight_decay * w``).

:func:`resolve_sparse` maps a sparse config and the backend that will run it to a
:class:`Resolution` (the fbgemm kind or optimizer class and its exact keyword
arguments), or refuses with a :class:`~recis.errors.ConfigError` naming the field. It is
never replaced by another optimizer. The backends:

=============== ===================================================================
``table_group`` the hashed engine's table groups (one process, and its sharded form):
                fbgemm's fused kernels for sgd / adagrad / rowwise_adagrad, recis'
                lazy row-wise Adam(W) (:mod:`recis.optim.sparse_adam`) for adam / adamw
``torch``       a torch optimizer over whole tables: the modulo engine in one process,
                and data-parallel (replicated) tables in distributed runs
``sharded``     fbgemm's fused kernels inside torchrec-sharded tables (``fused_params``
                of the sharders); what fbgemm runs depends on the device
=============== ===================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from fbgemm_gpu.split_table_batched_embeddings_ops_training import WeightDecayMode
from torch import nn
from torchrec.optim import RowWiseAdagrad

from recis.config import ModelConfig, OptimizerConfig, RunConfig, SparseOptimizerConfig
from recis.errors import ConfigError

from .sparse_adam import AdamHyper

Backend = Literal["table_group", "torch", "sharded"]
SPARSE_FIELD = "train.sparse_optimizer"
DENSE_FIELD = "train.dense_optimizer"

_FUSED = {
    "sgd": EmbOptimType.EXACT_SGD,
    "adagrad": EmbOptimType.EXACT_ADAGRAD,
    "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
}
# fbgemm's CPU kernels: the rest (Adam, LAMB, ...) raise "not supported in CPU mode"
CPU_FUSED = tuple(_FUSED)
_TORCH: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
    "rowwise_adagrad": RowWiseAdagrad,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}
_SHARDED_HINT = (
    "use model.embedding: hashed (its tables run every optimizer), or "
    "distributed.sharding: data_parallel for these tables (a torch optimizer)"
)


def coupling(name: str) -> Literal["l2", "decoupled"]:
    """How weight decay of optimizer ``name`` applies: ``adamw`` decoupled, others L2."""
    return "decoupled" if name == "adamw" else "l2"


@dataclass(frozen=True)
class Resolution:
    """What runs a sparse optimizer config on one backend.

    ``kind``: an fbgemm ``EmbOptimType`` (fused kernels), a torch optimizer class, or
    :class:`~recis.optim.sparse_adam.AdamHyper` (recis' lazy row-wise Adam(W));
    ``kwargs``: its exact arguments (besides parameters); ``lazy_l2``: L2 decay recis adds
    to the gradient of the batch's distinct rows itself, because the kernel has none
    (the hashed engine's fbgemm groups, docs/embedding.md "Weight decay").
    """

    kind: Any
    kwargs: dict[str, Any] = field(default_factory=dict)
    lazy_l2: float = 0.0

    @property
    def fused(self) -> bool:
        """Whether ``kind`` is an fbgemm fused kernel."""
        return isinstance(self.kind, EmbOptimType)


def resolve_sparse(
    cfg: SparseOptimizerConfig,
    backend: Backend,
    device: torch.device | str = "cpu",
    where: str = SPARSE_FIELD,
) -> Resolution:
    """The optimizer that runs ``cfg`` on ``backend`` (see the module docstring).

    Args:
        cfg: the sparse optimizer config.
        backend: ``table_group``, ``torch`` or ``sharded``.
        device: where the tables live (fbgemm's kernels differ on CPU and CUDA).
        where: the config field ``cfg`` came from, for error messages
            (``model.tables.<name>.optimizer`` for a table's own).

    Raises:
        ConfigError: ``backend`` cannot run ``cfg`` as configured.
    """
    device = torch.device(device)
    if backend == "table_group":
        if cfg.name in _FUSED:  # fbgemm's kernels, decayed by recis (none on CPU)
            kwargs = {"learning_rate": cfg.lr, "eps": cfg.eps}
            return Resolution(_FUSED[cfg.name], kwargs, lazy_l2=cfg.weight_decay)
        return Resolution(AdamHyper, _adam_hyper_kwargs(cfg))
    if backend == "torch":
        return Resolution(_TORCH[cfg.name], _torch_kwargs(cfg))
    if backend == "sharded":
        return _sharded(cfg, device, where)
    raise ValueError(f"unknown optimizer backend {backend!r}")


def _adam_hyper_kwargs(cfg: SparseOptimizerConfig) -> dict[str, Any]:
    return {
        "lr": cfg.lr,
        "beta1": cfg.beta1,
        "beta2": cfg.beta2,
        "eps": cfg.eps,
        "weight_decay": cfg.weight_decay,
        "decoupled": coupling(cfg.name) == "decoupled",
    }


def _torch_kwargs(cfg: SparseOptimizerConfig | OptimizerConfig) -> dict[str, Any]:
    """torch's arguments for ``cfg``; a dense config's ``eps: null`` keeps torch's own."""
    kwargs: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if cfg.name in ("adam", "adamw"):
        kwargs["betas"] = (cfg.beta1, cfg.beta2)
    if cfg.name != "sgd" and cfg.eps is not None:
        kwargs["eps"] = cfg.eps
    return kwargs


def _sharded(cfg: SparseOptimizerConfig, device: torch.device, where: str) -> Resolution:
    """fbgemm in torchrec's sharded tables: what the kernels of ``device`` can honour.

    fbgemm (1.8): on CPU only SGD, Adagrad and row-wise Adagrad exist and no kernel
    applies weight decay (measured: a step with weight_decay 0.5 in any mode equals one
    without); on CUDA SGD and Adagrad have no decay, row-wise Adagrad has L2 and ADAM's
    decay is always decoupled (its update is ``lr * (m_hat / (sqrt(v_hat) + eps) +
    weight_decay * w)``: AdamW's).
    """
    name, wd = cfg.name, cfg.weight_decay
    cpu = device.type == "cpu"
    if cpu and name not in _FUSED:
        raise ConfigError(
            f"{where}.name: {name!r} cannot run on torchrec-sharded tables on CPU: fbgemm's "
            f"CPU kernels are {list(CPU_FUSED)}; {_SHARDED_HINT}"
        )
    if wd and (cpu or name in ("sgd", "adagrad") or name == "adam"):
        why = (
            "fbgemm's CPU kernels apply no weight decay"
            if cpu
            else f"fbgemm's {name} kernel has no weight decay"
            if name != "adam"
            else "fbgemm's Adam decays decoupled only (use adamw for that)"
        )
        raise ConfigError(
            f"{where}.weight_decay: {wd:g} with {name!r} cannot be applied on torchrec-sharded "
            f"tables ({why}); set it to 0, or {_SHARDED_HINT}"
        )
    kwargs: dict[str, Any] = {"learning_rate": cfg.lr, "eps": cfg.eps}
    if name in ("adam", "adamw"):
        kwargs.update(beta1=cfg.beta1, beta2=cfg.beta2)
    if wd:  # fbgemm's default mode (NONE) would drop it silently
        kwargs["weight_decay"] = wd
        decoupled = coupling(name) == "decoupled"
        kwargs["weight_decay_mode"] = WeightDecayMode.DECOUPLE if decoupled else WeightDecayMode.L2
    return Resolution(_FUSED.get(name, EmbOptimType.ADAM), kwargs)


def fused_params(
    cfg: SparseOptimizerConfig, device: torch.device | str, where: str = SPARSE_FIELD
) -> dict[str, Any]:
    """torchrec sharders' ``fused_params`` for ``cfg`` (fbgemm's in-backward optimizer)."""
    r = resolve_sparse(cfg, "sharded", device, where)
    return {"optimizer": r.kind, **r.kwargs}


def sparse_torch_optimizer(
    params: list[nn.Parameter], cfg: SparseOptimizerConfig
) -> torch.optim.Optimizer:
    """The named torch optimizer over whole embedding tables (dense gradients: every row
    decays and, for Adam, moves on its moments at every step)."""
    r = resolve_sparse(cfg, "torch")
    return r.kind(params, **r.kwargs)


def dense_optimizer(params: list[nn.Parameter], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """``train.dense_optimizer``: the named torch optimizer with its arguments."""
    return _TORCH[cfg.name](params, **_torch_kwargs(cfg))


def check_sharded_tables(cfg: RunConfig, device: torch.device | str) -> None:
    """Refuse, before any data is read, a sparse optimizer that the torchrec-sharded tables
    of a distributed run of ``cfg`` could not run (model.embedding: modulo; hashed tables
    are split by recis and run every optimizer).

    A table of ``model.tables`` is fused-sharded unless its ``distributed.sharding`` (or
    the default) is ``data_parallel``; ``auto`` ones may be, whatever the planner picks.
    Tables a model makes itself are checked when it is sharded
    (:func:`recis.distributed.sharding.shard_model`, the same resolution).
    """
    model = cfg.model
    if not isinstance(model, ModelConfig) or model.embedding != "modulo":
        return
    d = cfg.distributed
    kinds = [d.sharding.get(t.name, d.default_sharding) for t in model.tables]
    if any(k != "data_parallel" for k in kinds):
        resolve_sparse(cfg.train.sparse_optimizer, "sharded", device)
