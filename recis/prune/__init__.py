"""recis.prune: SlimGPT structured pruning (arXiv 2412.18110) of transformer towers.

:func:`prune_model` prunes a model in memory, :func:`prune_run` a trained run directory into
a new one (``recis prune``), optionally followed by a recovery fine-tune
(:class:`FinetuneOptions`); see docs/pruning.md.
"""

from .finetune import FinetuneOptions
from .run import prune_run
from .slimgpt import PruneOptions, PruneReport, prune_model

__all__ = ["FinetuneOptions", "PruneOptions", "PruneReport", "prune_model", "prune_run"]
