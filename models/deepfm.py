"""DeepFM (Guo et al., IJCAI 2017): the second CTR baseline.

``logit_t = b_t + w . dense + sum_f w_f(id_f) + FM(e_1..e_F) + DNN_t([e_1..e_F, dense])``

* first order: a 1-dim embedding per id (tables ``<table>_w``, capacity as the table) and
  a linear map of the dense features;
* second order (FM): ``0.5 * sum_d ((sum_f e_fd)^2 - sum_f e_fd^2)`` over the pooled
  ``D``-dim embeddings of all ``F`` sparse features (shared with the DNN, as in the paper);
* DNN: MLP over the concatenated embeddings and dense values, one output per task.

The first- and second-order terms are shared by all tasks; each task has its own bias
and DNN output. Shapes: ``B`` batch, ``F`` sparse features, ``Dd`` dense, ``D`` dim.
"""

from __future__ import annotations

import dataclasses

import torch
from pydantic import Field
from pydantic.dataclasses import dataclass
from torch import nn

from recis.config import STRICT, ModelConfig
from recis.errors import ConfigError
from recis.features import Schema
from recis.io.batch import Batch

from .layers import MLP, dense_norm, model_embedding


@dataclass(config=STRICT)
class DeepFMConfig(ModelConfig):
    """All tables a sparse feature uses must share one dim (the FM needs one width)."""

    name: str = "deepfm"
    dnn: list[int] = Field(default_factory=lambda: [256, 128])
    dropout: float = Field(default=0.0, ge=0, lt=1)
    # batch normalisation of the dense inputs (before the linear term and the DNN): counts,
    # rates and ratings arrive on different scales and off-centre
    dense_norm: bool = False


class DeepFM(nn.Module):
    """DeepFM with per-task DNN outputs.

    Args:
        config: model options.
        schema: features and labels; tasks are the label names.
        device: where parameters live.

    Example::

        model = DeepFM(DeepFMConfig(tables=[...]), schema, torch.device("cpu"))
        logits = model(batch)  # {"click": [B]}
    """

    config_class = DeepFMConfig

    def __init__(
        self,
        config: DeepFMConfig,
        schema: Schema,
        device: torch.device,
        template_tables: bool = False,
    ) -> None:
        super().__init__()
        if not schema.sparse:
            raise ConfigError(
                "model.name: deepfm needs id features (data.schema.sparse) for its FM and "
                "first-order terms; dlrm trains on dense features alone"
            )
        self.tasks = [label.name for label in schema.labels]
        dims = {t.name: t.dim for t in config.tables}
        used = {dims[f.table_name] for f in schema.sparse if f.table_name in dims}
        if len(used) > 1:
            raise ConfigError(f"model.tables: DeepFM needs one embedding dim, got {sorted(used)}")
        d = used.pop() if used else 0
        self.feature_names = [f.name for f in schema.sparse]
        self.embedding = model_embedding(config, schema.sparse, device, template_tables)
        # first-order weights: a per-id scalar, stored as the sum of a dim-4 row because
        # fbgemm's fused kernels need dims that are multiples of 4 (same function class)
        wide_tables = [
            dataclasses.replace(
                t, name=f"{t.name}_w", dim=4, pooling="mean" if t.pooling == "mean" else "sum"
            )
            for t in config.tables
        ]
        wide_feats = [dataclasses.replace(f, table=f"{f.table_name}_w") for f in schema.sparse]
        self.first_order = model_embedding(
            config, wide_feats, device, template_tables, tables=wide_tables
        )
        num_dense = schema.dense_dim  # columns: a feature of dim k is k of them
        self.dense_norm = dense_norm(num_dense, config.dense_norm, device)
        self.dense_linear = nn.Linear(num_dense, len(self.tasks), device=device)
        self.dnn = MLP(
            len(schema.sparse) * d + num_dense,
            [*config.dnn, len(self.tasks)],
            dropout=config.dropout,
            last_activation=False,
            device=device,
        )

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        emb = self.embedding(batch.sparse).to_dict()
        e = torch.stack([emb[k] for k in self.feature_names], dim=1)  # [B, F, D]
        fm = 0.5 * (e.sum(1).pow(2) - e.pow(2).sum(1)).sum(1, keepdim=True)  # [B, 1]
        first = self.first_order(batch.sparse).values().sum(1, keepdim=True)  # [B, 1]
        dense = self.dense_norm(batch.dense)  # [B, Dd]
        deep = self.dnn(torch.cat([e.flatten(1), dense], dim=1))  # [B, T]
        logits = deep + fm + first + self.dense_linear(dense)  # [B, T]
        return {t: logits[:, i] for i, t in enumerate(self.tasks)}
