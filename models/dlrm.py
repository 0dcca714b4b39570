"""DLRM (Naumov et al., 2019): the CTR baseline.

Dense features go through a bottom MLP to a ``D``-dim vector; each sparse
feature is a pooled ``D``-dim embedding; the interaction layer takes the dot
product of every pair among those ``F + 1`` vectors; the top MLP maps the
dense vector and the ``(F + 1) F / 2`` dots to one logit per task.

Shapes: ``B`` batch, ``F`` sparse features, ``Dd`` dense features, ``D`` embedding dim.
"""

from __future__ import annotations

import torch
from pydantic import Field
from pydantic.dataclasses import dataclass
from torch import nn

from recis.config import STRICT, ModelConfig
from recis.features import Schema
from recis.io.batch import Batch

from .layers import MLP, dense_norm, model_embedding


@dataclass(config=STRICT)
class DLRMConfig(ModelConfig):
    """``bottom_mlp[-1]`` must equal the tables' dim (the dot interaction needs one width)."""

    bottom_mlp: list[int] = Field(default_factory=lambda: [64, 16])
    top_mlp: list[int] = Field(default_factory=lambda: [128, 64])
    dropout: float = Field(default=0.0, ge=0, lt=1)
    # a linear term over the raw dense inputs added to every logit (DeepFM's first-order
    # dense term, Wide & Deep's wide part): a dense feature that is already a good logit
    # (a causal like rate) reaches the output directly instead of only through the
    # bottom MLP's ReLUs and the dots
    wide_dense: bool = False
    # batch normalisation of the dense inputs (before the bottom MLP and the wide term):
    # counts, rates and ratings arrive on different scales and off-centre
    dense_norm: bool = False


class DLRM(nn.Module):
    """DLRM with dot interactions, one logit per task.

    Args:
        config: model options.
        schema: features and labels; tasks are the label names.
        device: where parameters live.

    Example::

        model = DLRM(DLRMConfig(tables=[...]), schema, torch.device("cpu"))
        logits = model(batch)  # {"click": [B]}
    """

    config_class = DLRMConfig
    # buffers (register_buffer): row / column of each pair of the interaction's upper triangle
    _tri_rows: torch.Tensor
    _tri_cols: torch.Tensor

    def __init__(
        self,
        config: DLRMConfig,
        schema: Schema,
        device: torch.device,
        template_tables: bool = False,
    ) -> None:
        super().__init__()
        dims = {t.name: t.dim for t in config.tables}
        d = config.bottom_mlp[-1]
        for f in schema.sparse:
            if dims.get(f.table_name, d) != d:
                raise ValueError(
                    f"model.tables.{f.table_name}.dim: {dims[f.table_name]} != bottom_mlp[-1] {d}"
                )
        self.tasks = [label.name for label in schema.labels]
        self.num_dense = schema.dense_dim  # columns: a feature of dim k is k of them
        self.sparse_arch = model_embedding(config, schema.sparse, device, template_tables)
        self.dense_arch = MLP(self.num_dense, config.bottom_mlp, device=device)
        n = len(schema.sparse) + 1
        rows, cols = torch.triu_indices(n, n, offset=1)
        self.register_buffer("_tri_rows", rows.to(device), persistent=False)
        self.register_buffer("_tri_cols", cols.to(device), persistent=False)
        self.top_arch = MLP(
            d + n * (n - 1) // 2,
            [*config.top_mlp, len(self.tasks)],
            dropout=config.dropout,
            last_activation=False,
            device=device,
        )
        self.feature_names = [f.name for f in schema.sparse]
        self.dense_norm = dense_norm(self.num_dense, config.dense_norm, device)
        self.wide = (
            nn.Linear(self.num_dense, len(self.tasks), device=device)
            if config.wide_dense and self.num_dense
            else None
        )

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        # sparse first: when sharded, its output exchange runs while the dense MLP computes,
        # and in backward the dense MLP's gradients come before the (long) embedding
        # backward, so their all-reduce (DDP, Horovod) overlaps it instead of following it
        # (a log of dense columns only has no lookup: the model is its MLPs and wide term)
        emb = self.sparse_arch(batch.sparse).to_dict() if self.feature_names else {}
        x = self.dense_norm(batch.dense)  # [B, Dd]
        dense = self.dense_arch(x)  # [B, D]
        stacked = torch.stack([dense] + [emb[k] for k in self.feature_names], dim=1)  # [B, F+1, D]
        dots = torch.bmm(stacked, stacked.transpose(1, 2))  # [B, F+1, F+1]
        inter = dots[:, self._tri_rows, self._tri_cols]  # [B, (F+1)F/2]
        logits = self.top_arch(torch.cat([dense, inter], dim=1))  # [B, T]
        if self.wide is not None:
            logits = logits + self.wide(x)  # [B, T]
        return {t: logits[:, i] for i, t in enumerate(self.tasks)}
