"""Plain torchrec ``EmbeddingBagCollection`` over ``id mod capacity``.

The engine for ``model.embedding: modulo``: no id mapper, so it is
collision-free only when ids are already in ``[0, capacity)`` (pre-mapped
data). :mod:`recis.distributed` shards it with torchrec's DistributedModelParallel
and per-table plans (table-, row-, column-wise, data-parallel); the hashed engine is
split by id instead (:mod:`recis.distributed.hashed`).
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recis.config import TableConfig
from recis.errors import ConfigError
from recis.features import SparseFeature, features_by_table

_POOLING = {"sum": PoolingType.SUM, "mean": PoolingType.MEAN}


class ModuloEmbeddingBagCollection(nn.Module):
    """torchrec ``EmbeddingBagCollection`` over ``id mod capacity``.

    Collision-free only when ids are already in ``[0, capacity)``.

    Shapes: input KJT with ``F`` keys and ``B`` rows; output KeyedTensor
    ``[B, sum of D]``, one key per feature.
    """

    def __init__(
        self, tables: list[TableConfig], features: list[SparseFeature], device: torch.device
    ) -> None:
        super().__init__()
        by_name = {t.name: t for t in tables}
        feats_of = features_by_table(features, list(by_name))
        configs = []
        for t in tables:
            if t.name not in feats_of:
                continue
            if t.optimizer is not None:  # its rows go to the trainer's one sparse optimizer
                raise ConfigError(
                    f"model.tables.{t.name}.optimizer: a per-table optimizer needs "
                    "model.embedding: hashed (modulo tables use train.sparse_optimizer)"
                )
            if t.pooling not in _POOLING:
                raise ConfigError(
                    f"model.tables.{t.name}.pooling: {t.pooling!r} needs a sequence model"
                )
            configs.append(
                EmbeddingBagConfig(
                    name=t.name,
                    embedding_dim=t.dim,
                    num_embeddings=t.capacity,
                    feature_names=feats_of[t.name],
                    pooling=_POOLING[t.pooling],
                )
            )
        self.capacity = {f.name: by_name[f.table_name].capacity for f in features}
        self.feature_names = [f.name for f in features]
        self.ebc = EmbeddingBagCollection(tables=configs, device=device)

    def forward(self, kjt: KeyedJaggedTensor) -> KeyedTensor:
        return self.ebc(modulo_ids(kjt, self.capacity))


def modulo_ids(
    kjt: KeyedJaggedTensor, capacity: dict[str, int], weights: bool = True
) -> KeyedJaggedTensor:
    """``kjt`` with each feature's ids taken ``mod capacity[feature]`` (non-negative);
    ``weights=False`` drops per-id weights (unpooled lookups have no use for them)."""
    device = kjt.values().device
    caps = torch.tensor([capacity[k] for k in kjt.keys()], device=device)
    per_value = torch.repeat_interleave(caps, torch.tensor(kjt.length_per_key(), device=device))
    return KeyedJaggedTensor(
        keys=kjt.keys(),
        values=torch.remainder(kjt.values(), per_value),
        lengths=kjt.lengths(),
        weights=kjt.weights_or_none() if weights else None,
    )
