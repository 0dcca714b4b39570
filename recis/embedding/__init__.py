"""Embedding engine.

:func:`build_embedding_collection` is the one entry point models use: it turns
table and feature specs into a :class:`HashedEmbeddingCollection`, a module
``KeyedJaggedTensor`` of raw 64-bit ids ``-> KeyedTensor`` (pooled embeddings,
one key per feature); sequence (pooling ``none``) tables are read with
``forward_sequences`` or ``lookup``. See docs/embedding.md.
"""

from __future__ import annotations

import torch

from recis.config import SparseOptimizerConfig, TableConfig
from recis.features import SparseFeature

from .collection import HashedEmbeddingCollection
from .groups import FbgemmTableGroup, TableSlot, TorchTableGroup
from .modulo import ModuloEmbeddingBagCollection

__all__ = [
    "FbgemmTableGroup",
    "HashedEmbeddingCollection",
    "ModuloEmbeddingBagCollection",
    "TableSlot",
    "TorchTableGroup",
    "build_embedding_collection",
]


def build_embedding_collection(
    tables: list[TableConfig],
    features: list[SparseFeature],
    device: torch.device | str,
    optimizer: SparseOptimizerConfig | None = None,
    seed: int = 0,
    engine: str = "hashed",
    template: bool = False,
) -> HashedEmbeddingCollection | ModuloEmbeddingBagCollection:
    """The embedding module for ``features``: ``KeyedJaggedTensor -> KeyedTensor``.

    ``optimizer`` is the run's ``train.sparse_optimizer`` (default: row-wise
    Adagrad, lr 0.05); rows are updated in backward by it, so the trainer must
    not give these weights to a torch optimizer (they carry
    ``_in_backward_optimizers``, or are buffers).

    ``engine="modulo"`` gives a plain torchrec ``EmbeddingBagCollection`` over
    ``id mod capacity`` instead (pre-mapped ids, sharded by torchrec's per-table
    plans in distributed runs); its rows go to the trainer's sparse torch optimizer.

    ``template``: hashed tables hold one row each (a template that the distributed
    sharder replaces by this rank's shard; configs kept as given).
    """
    if engine == "modulo":
        return ModuloEmbeddingBagCollection(tables, features, torch.device(device))
    return HashedEmbeddingCollection(
        tables, features, device, optimizer=optimizer, seed=seed, template=template
    )
