"""Text towers shared by the retrieval and relevance models.

* :class:`HashedBagTower` - mean of embeddings of hashed n-gram ids (fastText-like).
* :class:`LLMTower` - a ``transformers`` model (``AutoModel`` from a local directory or
  built from a config), pooled by mean / CLS / last token, optionally frozen, in fp32
  or bf16. Nothing is downloaded: ``path`` must be a local directory (a pruned model that
  ``recis.prune.hf.save_pruned`` wrote loads with its pruned shapes).

Both map token ids ``[B, T]`` with mask ``[B, T]`` to ``[B, out_dim]`` float32.
Token ids may be 64-bit hashes: they are taken ``mod vocab`` (identity for ids a real
tokenizer produced). :func:`text_input` reads a text from a batch: a
:class:`~recis.features.TextFeature` (``batch.text``) or a list-of-ids sparse feature.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic.dataclasses import dataclass
from torch import nn

from recis.config import STRICT
from recis.errors import ConfigError, DataError
from recis.io.batch import Batch

from .layers import padded_ids
from .structure import STRUCTURE_FILE, load_pruned_hf


@dataclass(config=STRICT)
class LLMTowerConfig:
    """Where the LLM comes from and how it is pooled.

    ``path``: a local directory written by ``save_pretrained``; else ``config``: the
    keyword arguments of ``transformers.AutoConfig.for_model`` (``model_type`` first,
    e.g. ``{model_type: bert, hidden_size: 32, num_hidden_layers: 2, ...}``).
    """

    path: str | None = None
    config: dict[str, Any] | None = None
    pooling: Literal["mean", "cls", "last"] = "mean"
    freeze: bool = False
    dtype: Literal["float32", "bfloat16"] = "float32"


def text_input(batch: Batch, name: str, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``[B, T]`` int64 and mask ``[B, T]`` bool of one text, ``T <= max_len``.

    From ``batch.text[name]`` (a text feature, padded to its ``max_length``: trailing
    columns that no row uses are cut, so short texts cost short sequences) or else from
    a list-of-ids sparse feature ``name`` (pre-tokenized ids, ``T = max_len``).
    """
    if name in batch.text:
        ids = batch.text[name]
        mask = batch.text.get(f"{name}_mask")
        mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
        used = int(mask.sum(1).max()) if mask.numel() else 0
        t = max(1, min(max_len, used))
        return ids[:, :t], mask[:, :t]
    if name not in batch.sparse.keys():
        raise DataError(f"batch has no text or list-of-ids feature {name!r}", column=name)
    return padded_ids(batch.sparse, name, max_len)


class HashedBagTower(nn.Module):
    """Mean-pooled embeddings of hashed token ids. ``[B, T] -> [B, dim]``."""

    def __init__(self, vocab: int, dim: int, device: torch.device | None = None) -> None:
        super().__init__()
        self.vocab = vocab
        self.embedding = nn.Embedding(vocab, dim, device=device)
        nn.init.normal_(self.embedding.weight, std=0.05)
        self.out_dim = dim

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        e = self.embedding(torch.remainder(ids, self.vocab))  # [B, T, D]
        m = mask.unsqueeze(-1).to(e.dtype)
        return (e * m).sum(1) / m.sum(1).clamp_min(1.0)


class LLMTower(nn.Module):
    """A transformers encoder/decoder used as a text tower. ``[B, T] -> [B, hidden]``.

    Args:
        config: source, pooling, freezing, dtype.
        device: where the weights live.
    """

    def __init__(self, config: LLMTowerConfig, device: torch.device | None = None) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        dtype = torch.bfloat16 if config.dtype == "bfloat16" else torch.float32
        self.model: Any  # a transformers PreTrainedModel, however it was loaded
        if config.path is not None:
            if not Path(config.path).is_dir():
                raise ConfigError(f"model.llm.path: {config.path!r} is not a local directory")
            if (Path(config.path) / STRUCTURE_FILE).is_file():  # written by recis prune
                self.model = load_pruned_hf(config.path, dtype, base=True)
            else:
                self.model = AutoModel.from_pretrained(config.path, dtype=dtype)
        elif config.config is not None:
            kwargs = dict(config.config)
            model_type = kwargs.pop("model_type", None)
            if not isinstance(model_type, str):
                raise ConfigError("model.llm.config.model_type: field required")
            try:
                hf_config = AutoConfig.for_model(model_type, **kwargs)
            except (ValueError, TypeError) as err:
                raise ConfigError(f"model.llm.config: {err}") from None
            self.model = AutoModel.from_config(hf_config).to(dtype)
        else:
            raise ConfigError("model.llm: set path (local directory) or config")
        self.model.to(device)
        self.pooling = config.pooling
        self.frozen = config.freeze
        if config.freeze:
            self.model.requires_grad_(False)
        self.vocab = int(self.model.config.vocab_size)
        self.out_dim = int(self.model.config.hidden_size)

    def train(self, mode: bool = True) -> LLMTower:
        super().train(mode)
        if self.frozen:
            self.model.eval()  # a frozen tower keeps dropout off
        return self

    def hidden(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-token states ``[B, T, H]`` in float32."""
        return self.model(
            input_ids=torch.remainder(ids, self.vocab), attention_mask=mask.long()
        ).last_hidden_state.float()

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.hidden(ids, mask)  # [B, T, H]
        if self.pooling == "cls":
            return out[:, 0]
        if self.pooling == "last":
            last = (mask.long().sum(1) - 1).clamp_min(0)
            return out[torch.arange(out.shape[0], device=out.device), last]
        m = mask.unsqueeze(-1).to(out.dtype)
        return (out * m).sum(1) / m.sum(1).clamp_min(1.0)

    def save_pretrained(self, path: str | Path) -> None:
        """Write the LLM so ``LLMTowerConfig(path=path)`` loads it back."""
        self.model.save_pretrained(str(path))
