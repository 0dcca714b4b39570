"""Building blocks shared by the models."""

from __future__ import annotations

import dataclasses
import warnings

import torch
from torch import nn
from torchrec import EmbeddingCollection, EmbeddingConfig
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from recis.config import ModelConfig, SparseOptimizerConfig, TableConfig
from recis.embedding import (
    HashedEmbeddingCollection,
    ModuloEmbeddingBagCollection,
    build_embedding_collection,
)
from recis.embedding.modulo import modulo_ids
from recis.features import SparseFeature, features_by_table
from recis.io.batch import Batch


def model_embedding(
    config: ModelConfig,
    features: list[SparseFeature],
    device: torch.device,
    template: bool,
    tables: list[TableConfig] | None = None,
) -> HashedEmbeddingCollection | ModuloEmbeddingBagCollection:
    """The pooled embedding of ``features`` from the model's tables (or ``tables``), with the
    run's sparse optimizer and embedding engine; ``template``: hashed tables as templates."""
    return build_embedding_collection(
        config.tables if tables is None else tables,
        features,
        device,
        config.sparse_optimizer,
        engine=config.embedding,
        template=template,
    )


class MLP(nn.Sequential):
    """Linear layers with ReLU between them.

    Shapes: ``[B, in_dim] -> [B, sizes[-1]]``.

    Args:
        in_dim: input width.
        sizes: output width of each layer.
        dropout: dropout after each hidden activation.
        last_activation: apply ReLU after the last layer too.
    """

    def __init__(
        self,
        in_dim: int,
        sizes: list[int],
        dropout: float = 0.0,
        last_activation: bool = True,
        device: torch.device | None = None,
    ) -> None:
        layers: list[nn.Module] = []
        for i, out in enumerate(sizes):
            with warnings.catch_warnings():
                # no inputs (a DLRM without dense features): the layer is its bias, a learned
                # constant, and torch warns that initialising its empty weight does nothing
                warnings.filterwarnings("ignore", "Initializing zero-element tensors")
                layers.append(nn.Linear(in_dim, out, device=device))
            last = i == len(sizes) - 1
            if not last or last_activation:
                layers.append(nn.ReLU())
                if dropout and not last:
                    layers.append(nn.Dropout(dropout))
            in_dim = out
        super().__init__(*layers)


def select_features(kjt: KeyedJaggedTensor, keys: list[str]) -> KeyedJaggedTensor:
    """The sub-KJT holding only ``keys`` (in that order); ``B`` is kept."""
    if list(kjt.keys()) == keys:
        return kjt
    jts = kjt.to_dict()
    return KeyedJaggedTensor.from_jt_dict({k: jts[k] for k in keys})


def positions(idx: list[int]) -> list[int] | slice:
    """``idx`` as a slice when it is a run of consecutive positions: ``x[:, positions(idx)]``
    is then a view, not a gather (the same values, and the same gradients)."""
    if idx and idx == list(range(idx[0], idx[-1] + 1)):
        return slice(idx[0], idx[-1] + 1)
    return idx


def padded_ids(
    kjt: KeyedJaggedTensor, key: str, max_len: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One list-of-ids feature as padded ids ``[B, L]`` (0 where padded) and mask ``[B, L]``.

    ``L`` is ``max_len`` when given (longer rows are cut), else the longest row of the batch.
    """
    jt = kjt[key]
    lengths = jt.lengths()
    length = int(max_len) if max_len is not None else max(int(lengths.max().item()), 1)
    ids = jt.to_padded_dense(desired_length=length, padding_value=0)
    mask = torch.arange(length, device=lengths.device)[None, :] < lengths[:, None]
    return ids, mask


def text_or_list_ids(batch: Batch, name: str, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``[B, <= width]`` int64 and mask (bool) of a text feature (cut to ``width``),
    or of a list-of-ids feature padded to ``width``."""
    if name in batch.text:
        ids = batch.text[name][:, :width]
        mask = batch.text.get(f"{name}_mask", torch.ones_like(ids, dtype=torch.bool))
        return ids.to(torch.int64), mask[:, :width].bool()
    ids, mask = padded_ids(batch.sparse, name, width)
    return ids.to(torch.int64), mask


class SequenceEmbedding(nn.Module):
    """Per-position embeddings of list-of-ids features (behaviour sequences).

    With ``engine="hashed"`` (the default) the ids go through the hashed engine
    (:class:`recis.embedding.HashedEmbeddingCollection`, its tables taken with pooling
    ``none``); with ``engine="modulo"`` through a torchrec ``EmbeddingCollection``
    over ``id mod capacity`` (pre-mapped ids).

    Shapes: KJT with the sequence features, ``B`` rows -> per feature
    ``values [B, L, D]`` and ``mask [B, L]`` (``L`` = longest row, or ``max_len``).

    Args:
        tables: table specs; every table a feature uses must share one dim.
        features: the sequence features (their ``table_name`` picks the table).
        device: where the tables live.
    """

    def __init__(
        self,
        tables: list[TableConfig],
        features: list[SparseFeature],
        device: torch.device,
        optimizer: SparseOptimizerConfig | None = None,
        engine: str = "hashed",
        template: bool = False,
    ) -> None:
        super().__init__()
        by_name = {t.name: t for t in tables}
        feats_of = features_by_table(features, list(by_name))
        configs = [
            EmbeddingConfig(
                name=t,
                embedding_dim=by_name[t].dim,
                num_embeddings=by_name[t].capacity,
                feature_names=names,
            )
            for t, names in feats_of.items()
        ]
        self.capacity = {f.name: by_name[f.table_name].capacity for f in features}
        self.max_len = {f.name: f.max_len for f in features}
        self.feature_names = [f.name for f in features]
        self.hashed: HashedEmbeddingCollection | None = None
        self.ec: EmbeddingCollection | None = None
        if engine == "hashed":
            seq_tables = [dataclasses.replace(by_name[t], pooling="none") for t in feats_of]
            hashed = build_embedding_collection(
                seq_tables, features, device, optimizer, template=template
            )
            assert isinstance(hashed, HashedEmbeddingCollection)  # what engine "hashed" builds
            self.hashed = hashed
        else:
            self.ec = EmbeddingCollection(tables=configs, device=device)

    def forward(self, kjt: KeyedJaggedTensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        kjt = select_features(kjt, self.feature_names)
        if self.hashed is not None:
            return {n: self._pad(n, jt) for n, jt in self.hashed.forward_sequences(kjt).items()}
        assert self.ec is not None  # the modulo engine's collection, built when not hashed
        mapped = modulo_ids(kjt, self.capacity, weights=False)
        return {name: self._pad(name, jt) for name, jt in self.ec(mapped).items()}

    def _pad(self, name: str, jt: JaggedTensor) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = jt.lengths()
        length = self.max_len[name] or max(int(lengths.max().item()) if len(lengths) else 1, 1)
        values = jt.to_padded_dense(desired_length=length, padding_value=0.0)  # [B, L, D]
        mask = torch.arange(length, device=lengths.device)[None, :] < lengths[:, None]
        return values, mask


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over ``dim`` ignoring masked-out entries; an all-masked row gives zeros."""
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=dim)
    return torch.nan_to_num(probs, nan=0.0)


def attention_pool(h: torch.Tensor, mask: torch.Tensor, score: nn.Module) -> torch.Tensor:
    """``h [B, T, d]`` averaged with the weights ``softmax(score(h) [B, T, 1])`` over the
    positions of ``mask [B, T]`` -> ``[B, d]``."""
    return torch.einsum("bt,btd->bd", masked_softmax(score(h).squeeze(-1), mask), h)


class DenseNorm(nn.BatchNorm1d):
    """Batch normalisation of the dense inputs ``[B, Dd] -> [B, Dd]``.

    Counts, rates and ratings arrive on different scales and off-centre; the MLPs (and a
    linear term) train far better on standardised values (measured on MovieLens, see
    ``docs/models/dlrm.md``). Statistics are learnt from the training batches, so no
    per-dataset mean/std goes into the config. A training batch of one row (a last partial
    batch) is normalised with the running statistics instead of failing.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] < 2:
            return nn.functional.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return super().forward(x)


def dense_norm(num_dense: int, enabled: bool, device: torch.device | None = None) -> nn.Module:
    """:class:`DenseNorm` over ``num_dense`` inputs when ``enabled`` (and there are any),
    else the identity."""
    if enabled and num_dense:
        return DenseNorm(num_dense, device=device)
    return nn.Identity()
