"""recis.optim: the optimizer spec (:mod:`.spec`), schedules, multi-task objectives."""

from .dense import build_schedule, lr_factor, split_parameters
from .multitask import (
    PriorityObjective,
    WeightedSumObjective,
    build_objective,
    resolve_tasks,
    task_loss,
)
from .spec import (
    Resolution,
    dense_optimizer,
    fused_params,
    resolve_sparse,
)
from .spec import sparse_torch_optimizer as sparse_optimizer

__all__ = [
    "PriorityObjective",
    "Resolution",
    "WeightedSumObjective",
    "build_objective",
    "build_schedule",
    "dense_optimizer",
    "fused_params",
    "lr_factor",
    "resolve_sparse",
    "resolve_tasks",
    "sparse_optimizer",
    "split_parameters",
    "task_loss",
]
