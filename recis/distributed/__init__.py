"""recis.distributed: multi-process training on torchrun (torch.distributed) and Horovod.

- :func:`init_distributed` -> :class:`DistContext` (rank, world size, device, backend);
- :func:`shard_model`: torchrec DistributedModelParallel with a per-table plan;
- :class:`DistributedTrainer`: fused sparse + reduced dense updates, global metrics;
- :mod:`recis.distributed.checkpoint`: torch.distributed.checkpoint across world sizes.

See docs/distributed.md.
"""

from .context import DistContext, detect_launcher, init_distributed, shutdown
from .sharding import SHARDING_TYPES, build_plan, shard_model

__all__ = [
    "SHARDING_TYPES",
    "DistContext",
    "build_plan",
    "detect_launcher",
    "init_distributed",
    "shard_model",
    "shutdown",
]
