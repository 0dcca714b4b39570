"""DenseRelevance: the dense dual-tower baseline of DeepBoW (:mod:`recis.models.deepbow`).

Same text encoder and calibration head as DeepBoW, attention-pooled into one vector per side
and scored by cosine; trained from the same YAML (a :class:`DeepBoWConfig`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recis.features import Schema
from recis.io.batch import Batch

from .deepbow import DeepBoWConfig, TextEncoder, relevance_head
from .layers import attention_pool
from .text_towers import text_input


class DenseRelevance(nn.Module):
    """Dense dual-tower baseline for relevance: same encoder, attention-pooled, cosine.

    ``logit = a cos(u_q, u_p) + b`` with ``u = W pool(h)``, plus the same side inputs as
    DeepBoW (:class:`RelevanceHead`: dense features, and with ``product_prior`` a linear read
    of ``u_p``); soft-label BCE (the trainer's).
    Takes a :class:`DeepBoWConfig` (bag fields unused) so both train from one YAML.
    """

    config_class = DeepBoWConfig

    def __init__(
        self,
        config: DeepBoWConfig,
        schema: Schema,
        device: torch.device,
        template_tables: bool = False,
    ) -> None:
        # template_tables: no hashed tables here (the zoo's one constructor signature)
        super().__init__()
        self.config = config
        self.tasks = [label.name for label in schema.labels]
        self.encoder = TextEncoder(config, device)
        d = self.encoder.out_dim
        self.pool_score = nn.Linear(d, 1, device=device)
        self.proj = nn.Linear(d, d, device=device)
        self.head = relevance_head(config, schema, len(self.tasks), device)
        self.prior = nn.Linear(d, len(self.tasks), device=device) if config.product_prior else None

    def embed(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(ids, mask)
        return F.normalize(self.proj(attention_pool(h, mask, self.pool_score)), dim=-1)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        cfg = self.config
        q = self.embed(*text_input(batch, cfg.query_text, cfg.max_len))
        p = self.embed(*text_input(batch, cfg.product_text, cfg.max_len))
        prior = self.prior(p) if self.prior is not None else None
        logits = self.head((q * p).sum(-1), batch.dense if cfg.dense_inputs else None, prior)
        return {t: logits[:, i] for i, t in enumerate(self.tasks)}
