"""recis.train: the trainer and checkpoints."""

from .checkpoint import load_checkpoint, save_checkpoint
from .trainer import Trainer

__all__ = ["Trainer", "load_checkpoint", "save_checkpoint"]
