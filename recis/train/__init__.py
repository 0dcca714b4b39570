"""recis.train: the trainer and its pipeline and context, callbacks, checkpoints, run logs
and plots."""

from .callbacks import Callback, EarlyStopping
from .checkpoint import CheckpointManager, latest_checkpoint, load_checkpoint, save_checkpoint
from .context import TrainContext
from .pipeline import PreparesAhead, TrainPipeline
from .trainer import Trainer

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
