"""recis.optim: dense optimizers and schedules, multi-task objectives."""

from .dense import build_schedule, dense_optimizer, lr_factor, sparse_optimizer, split_parameters
from .multitask import (
    PriorityObjective,
    WeightedSumObjective,
    build_objective,
    resolve_tasks,
    task_loss,
)

__all__ = [
    "PriorityObjective",
    "WeightedSumObjective",
    "build_objective",
    "build_schedule",
    "dense_optimizer",
    "lr_factor",
    "resolve_tasks",
    "sparse_optimizer",
    "split_parameters",
    "task_loss",
]
