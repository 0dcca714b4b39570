"""recis.train: the trainer, callbacks, checkpoints, run logs and plots."""

from .callbacks import Callback, EarlyStopping
from .checkpoint import CheckpointManager, latest_checkpoint, load_checkpoint, save_checkpoint
from .trainer import Trainer

__all__ = [
    "Callback",
    "CheckpointManager",
    "EarlyStopping",
    "Trainer",
    "latest_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
]
