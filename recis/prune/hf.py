"""Pruned ``transformers`` models on disk: ``save_pretrained`` plus the kept shapes.

A pruned layer has fewer heads / FFN channels than the config's (one value for every
layer), so ``from_pretrained`` alone cannot rebuild it. :func:`save_pruned` writes the model
with ``save_pretrained`` and its per-layer shapes to ``recis_structure.json``;
:func:`load_pruned` builds the model from its config, narrows its layers to those shapes
(:func:`recis.models.structure.load_pruned_hf`, which ``LLMTower(path=...)`` uses too) and
loads the saved weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from recis.models.structure import STRUCTURE_FILE, load_pruned_hf, structure_of

from .slimgpt import PruneReport

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def save_pruned(
    model: PreTrainedModel, path: str | Path, report: PruneReport | None = None
) -> Path:
    """Write ``model`` (a ``transformers`` model) and its layer shapes to ``path``."""
    path = Path(path)
    model.save_pretrained(str(path))
    record: dict[str, Any] = {"structure": structure_of(model)}
    if report is not None:
        record["report"] = {
            "layers": report.layers,
            "params_before": report.params_before,
            "params_after": report.params_after,
            "seconds": report.seconds,
        }
    (path / STRUCTURE_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return path


def load_pruned(
    path: str | Path, dtype: torch.dtype = torch.float32, base: bool = False
) -> nn.Module:
    """The model :func:`save_pruned` wrote (its architecture class, e.g. ``LlamaForCausalLM``;
    ``base``: the base model alone, as ``LLMTower`` loads it)."""
    return load_pruned_hf(path, dtype, base)
