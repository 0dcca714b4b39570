"""recis.models: the model zoo. One file per model, with its config class beside it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from recis.config import ModelConfig, validate
from recis.errors import ConfigError
from recis.features import Schema

from .deepbow import DeepBoW, DeepBoWConfig, DenseRelevance
from .deepfm import DeepFM, DeepFMConfig
from .dlrm import DLRM, DLRMConfig
from .hhft import HHFT, HHFTConfig
from .two_tower import TwoTower, TwoTowerConfig

# name -> model class; read-only, built once at import (no registration at run time)
MODELS: dict[str, type[nn.Module]] = {
    "dlrm": DLRM,
    "deepfm": DeepFM,
    "hhft": HHFT,
    "two_tower": TwoTower,
    "deepbow": DeepBoW,
    "dense_relevance": DenseRelevance,
}


def model_class(name: str) -> type[nn.Module]:
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"model.name: unknown model {name!r}; known: {sorted(MODELS)}") from None


def model_config(raw: dict[str, Any] | ModelConfig) -> ModelConfig:
    """Validate a ``model:`` mapping against the config class of the model it names."""
    if isinstance(raw, ModelConfig):
        return raw
    name = raw.get("name", "dlrm") if isinstance(raw, dict) else None
    if not isinstance(name, str):
        raise ConfigError(f"model.name: expected str, got {name!r}")
    return validate(model_class(name).config_class, raw, prefix="model")


def build_model(config: ModelConfig, schema: Schema, device: torch.device | str) -> nn.Module:
    return model_class(config.name)(config, schema, torch.device(device))


__all__ = [
    "DLRM",
    "DeepBoW",
    "DeepBoWConfig",
    "DenseRelevance",
    "DLRMConfig",
    "DeepFM",
    "DeepFMConfig",
    "HHFT",
    "HHFTConfig",
    "MODELS",
    "TwoTower",
    "TwoTowerConfig",
    "build_model",
    "model_class",
    "model_config",
]
