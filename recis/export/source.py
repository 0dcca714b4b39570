"""A trained run directory -> its config and a trainer holding the checkpoint's weights,
built the way ``recis eval`` builds them (:func:`recis.train.runner.build`)."""

from __future__ import annotations

from pathlib import Path

from recis.config import RunConfig, load_config
from recis.errors import CheckpointError
from recis.train import Trainer
from recis.train.checkpoint import CheckpointManager
from recis.train.runner import build


def pick_checkpoint(run_dir: Path, checkpoint: str | Path | None = None) -> Path:
    """``checkpoint`` if given, else the run's ``best``, ``final`` or newest numbered one."""
    if checkpoint is not None:
        return Path(checkpoint)
    for name in ("best", "final"):
        if (run_dir / "checkpoints" / name).is_dir():
            return run_dir / "checkpoints" / name
    latest = CheckpointManager(run_dir / "checkpoints").latest()
    if latest is None:
        raise CheckpointError(f"{run_dir}: no checkpoint under checkpoints/")
    return latest


def load_run(
    run_dir: str | Path, checkpoint: str | Path | None = None
) -> tuple[RunConfig, Trainer, Path, int]:
    """``(config, trainer with the weights, checkpoint path, its step)`` of a trained run
    (single-process checkpoints; the config is the run's own ``config.yaml``)."""
    run_dir = Path(run_dir)
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise CheckpointError(f"{config}: missing: not a recis run directory")
    import recis.models  # noqa: F401  (registers the models load_config resolves)

    cfg = load_config(config)
    path = pick_checkpoint(run_dir, checkpoint)
    if (path / ".metadata").exists():
        raise CheckpointError(f"{path}: a distributed checkpoint; export reads single-process ones")
    trainer, _ = build(cfg, for_training=False)
    meta = trainer.load_weights(path)
    trainer.model.eval()
    return cfg, trainer, path, int(meta.get("step", 0))
