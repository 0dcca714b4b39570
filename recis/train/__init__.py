"""recis.train: the trainer and its pipeline and context, callbacks, checkpoints, run logs
and plots.

The names below load on first use: ``recis plot`` and ``recis.train.runlog`` need neither
torch nor torchrec, and importing them through this package loaded both (10 s for a plot
on a 2-core machine, 1.3 s without).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from recis.lazy import lazy_names

if TYPE_CHECKING:
    from .callbacks import Callback, EarlyStopping
    from .checkpoint import CheckpointManager, latest_checkpoint, load_checkpoint, save_checkpoint
    from .context import TrainContext
    from .pipeline import PreparesAhead, TrainPipeline
    from .trainer import Trainer

_HOME = {
    "Callback": "callbacks",
    "EarlyStopping": "callbacks",
    "CheckpointManager": "checkpoint",
    "latest_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "TrainContext": "context",
    "PreparesAhead": "pipeline",
    "TrainPipeline": "pipeline",
    "Trainer": "trainer",
}

__all__ = [
    "Callback",
    "CheckpointManager",
    "EarlyStopping",
    "PreparesAhead",
    "TrainContext",
    "TrainPipeline",
    "Trainer",
    "latest_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
]


__getattr__ = lazy_names(__name__, _HOME)
