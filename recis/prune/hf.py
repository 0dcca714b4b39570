"""Pruned ``transformers`` models on disk: ``save_pretrained`` plus the kept shapes.

A pruned layer has fewer heads / FFN channels than the config's (one value for every
layer), so ``from_pretrained`` alone cannot rebuild it. :func:`save_pruned` writes the model
with ``save_pretrained`` and its per-layer shapes to ``recis_structure.json``;
:func:`load_pruned` builds the model from its config, narrows its layers to those shapes
(:func:`recis.models.structure.apply_structure`) and loads the saved weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file
from torch import nn

from recis.errors import CheckpointError
from recis.models.structure import apply_structure, structure_of

from .slimgpt import PruneReport

if TYPE_CHECKING:
    from transformers import PreTrainedModel

STRUCTURE_FILE = "recis_structure.json"


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


def load_pruned(path: str | Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The model :func:`save_pruned` wrote (its architecture class, e.g. ``LlamaModel``)."""
    import transformers

    path = Path(path)
    structure_path = path / STRUCTURE_FILE
    if not structure_path.is_file():
        raise CheckpointError(f"{structure_path}: missing (not written by recis prune)")
    try:
        structure = json.loads(structure_path.read_text())["structure"]
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{structure_path}: not a structure record: {err}") from None
    config = transformers.AutoConfig.from_pretrained(str(path))
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    model = cls(config) if cls is not None else transformers.AutoModel.from_config(config)
    apply_structure(model, structure)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no *.safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    model.tie_weights()
    loaded = {p.data_ptr() for k, p in model.state_dict().items() if k in state}
    untied = [k for k in missing if model.state_dict()[k].data_ptr() not in loaded]
    if unexpected or untied:
        raise CheckpointError(
            f"{path}: weights do not match the pruned model: missing {untied[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return model.to(dtype).eval()
