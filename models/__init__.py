"""recis.models: the model zoo. One file per model, with its config class beside it."""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from recis.config import ModelConfig, model_config, register_model_configs
from recis.errors import ConfigError
from recis.features import Schema

from .deepbow import DeepBoW, DeepBoWConfig
from .deepfm import DeepFM, DeepFMConfig
from .dense_relevance import DenseRelevance
from .dlrm import DLRM, DLRMConfig
from .hhft import HHFT, HHFTConfig
from .two_tower import TwoTower, TwoTowerConfig


class ModelClass(Protocol):
    """What a model class of the zoo offers: its config class, and a constructor from that
    config, the data schema and the device."""

    @property
    def config_class(self) -> type[ModelConfig]: ...  # read-only: each class names its own

    # ``config`` is Any: each class takes its own ModelConfig subclass (DLRMConfig, ...), which
    # a parameter typed ModelConfig would refuse (arguments are contravariant)
    # ``template_tables``: hashed tables hold one row each (templates the distributed sharder
    # replaces by each rank's shard)
    def __call__(
        self, config: Any, schema: Schema, device: torch.device, template_tables: bool = False
    ) -> nn.Module: ...


# name -> model class; read-only, built once at import (no registration at run time)
MODELS: dict[str, ModelClass] = {
    "dlrm": DLRM,
    "deepfm": DeepFM,
    "hhft": HHFT,
    "two_tower": TwoTower,
    "deepbow": DeepBoW,
    "dense_relevance": DenseRelevance,
}


# run configs (recis.config, below this package) resolve ``model.name`` through these
register_model_configs({name: cls.config_class for name, cls in MODELS.items()})


def model_class(name: str) -> ModelClass:
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"model.name: unknown model {name!r}; known: {sorted(MODELS)}") from None


def build_model(
    config: ModelConfig, schema: Schema, device: torch.device | str, template_tables: bool = False
) -> nn.Module:
    """The model ``config`` names; ``template_tables``: its hashed tables hold one row each,
    templates that the distributed sharder replaces by each rank's shard."""
    model = model_class(config.name)(config, schema, torch.device(device), template_tables)
    if config.structure:  # pruned by recis prune: its narrower layers, before weights load
        from .structure import apply_structure

        apply_structure(model, config.structure)
    return model


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
    "ModelClass",
    "TwoTower",
    "TwoTowerConfig",
    "build_model",
    "model_class",
    "model_config",
]
