"""Layer surgery for ``transformers`` models (see :mod:`recis.models.structure`).

LLaMA-style decoders (LLaMA, Qwen2, Qwen3, Mistral), GPT-2 and BERT. Their attention code
reads the number of heads from the projections' shapes (``view(..., -1, head_dim)``), so a
narrower layer runs unchanged once its head counters agree. Under grouped-query attention a
unit is one key/value head with its query heads: the query-per-key ratio stays as in the
config, which every layer shares.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers.models.bert.modeling_bert import BertLayer
from transformers.models.gpt2.modeling_gpt2 import GPT2Block
from transformers.models.llama.modeling_llama import LlamaDecoderLayer
from transformers.models.mistral.modeling_mistral import MistralDecoderLayer
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer
from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer
from transformers.pytorch_utils import Conv1D

from .surgery import LayerSurgery, Sink, head_index, input_hook, linear_cols, linear_rows


class LlamaSurgery(LayerSurgery):
    """``self_attn.{q,k,v,o}_proj`` and ``mlp.{gate,up,down}_proj``."""

    def __init__(self, layer: Any) -> None:  # a transformers layer: submodules read by name
        self.attn, self.mlp = layer.self_attn, layer.mlp

    @property
    def units(self) -> int:
        return self.attn.k_proj.out_features // self.attn.head_dim

    @property
    def unit_width(self) -> int:
        return self.attn.num_key_value_groups * self.attn.head_dim

    @property
    def narrowest_unit_width(self) -> int:
        return int(self.attn.head_dim)

    def heads_of(self, units: int) -> int:
        return units * self.attn.num_key_value_groups

    @property
    def ffn(self) -> int:
        return self.mlp.down_proj.in_features

    def attention_out(self) -> torch.Tensor:
        return self.attn.o_proj.weight.detach()[None]

    def ffn_out(self) -> torch.Tensor:
        return self.mlp.down_proj.weight.detach()[None]

    def keep_units(self, keep: torch.Tensor, out: torch.Tensor | None = None) -> None:
        a = self.attn
        q, kv = head_index(keep, self.unit_width), head_index(keep, a.head_dim)
        a.q_proj, a.k_proj, a.v_proj = (
            linear_rows(a.q_proj, q),
            linear_rows(a.k_proj, kv),
            linear_rows(a.v_proj, kv),
        )
        a.o_proj = linear_cols(a.o_proj, q, out)

    def keep_channels(self, keep: torch.Tensor, out: torch.Tensor | None = None) -> None:
        m = self.mlp
        m.gate_proj, m.up_proj = linear_rows(m.gate_proj, keep[0]), linear_rows(m.up_proj, keep[0])
        m.down_proj = linear_cols(m.down_proj, keep[0], out)
        m.intermediate_size = len(keep[0])

    def capture(self, kind: str, sink: Sink) -> Callable[[], None]:
        return input_hook(self.attn.o_proj if kind == "attention" else self.mlp.down_proj, sink)


def _conv(conv: Conv1D, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Give a GPT-2 ``Conv1D`` (``weight [in, out]``) new weights in place."""
    conv.weight = nn.Parameter(weight.detach().clone().contiguous())
    conv.bias = nn.Parameter(bias.detach().clone().contiguous())
    conv.nf = weight.shape[1]


class GPT2Surgery(LayerSurgery):
    """``attn.c_attn`` (fused q/k/v), ``attn.c_proj``, ``mlp.c_fc``, ``mlp.c_proj``."""

    def __init__(self, layer: Any) -> None:  # a transformers layer: submodules read by name
        self.attn, self.mlp = layer.attn, layer.mlp

    @property
    def units(self) -> int:
        return self.attn.num_heads

    @property
    def unit_width(self) -> int:
        return self.attn.head_dim

    @property
    def ffn(self) -> int:
        return self.mlp.c_fc.nf

    def attention_out(self) -> torch.Tensor:
        return self.attn.c_proj.weight.detach().T[None]

    def ffn_out(self) -> torch.Tensor:
        return self.mlp.c_proj.weight.detach().T[None]

    def keep_units(self, keep: torch.Tensor, out: torch.Tensor | None = None) -> None:
        a, cols = self.attn, head_index(keep, self.attn.head_dim)
        width = a.split_size
        fused = torch.cat([cols, cols + width, cols + 2 * width])
        _conv(a.c_attn, a.c_attn.weight[:, fused], a.c_attn.bias[fused])
        proj = a.c_proj.weight[cols] if out is None else out[0].T.to(a.c_proj.weight)
        _conv(a.c_proj, proj, a.c_proj.bias)
        a.num_heads, a.split_size = len(keep), len(cols)

    def keep_channels(self, keep: torch.Tensor, out: torch.Tensor | None = None) -> None:
        m, k = self.mlp, keep[0]
        _conv(m.c_fc, m.c_fc.weight[:, k], m.c_fc.bias[k])
        proj = m.c_proj.weight[k] if out is None else out[0].T.to(m.c_proj.weight)
        _conv(m.c_proj, proj, m.c_proj.bias)

    def capture(self, kind: str, sink: Sink) -> Callable[[], None]:
        return input_hook(self.attn.c_proj if kind == "attention" else self.mlp.c_proj, sink)


class BertSurgery(LayerSurgery):
    """``attention.self.{query,key,value}``, ``attention.output.dense``,
    ``intermediate.dense``, ``output.dense``."""

    def __init__(self, layer: Any) -> None:  # a transformers layer: submodules read by name
        self.layer = layer
        self.self_attn = layer.attention.self

    @property
    def units(self) -> int:
        return self.self_attn.num_attention_heads

    @property
    def unit_width(self) -> int:
        return self.self_attn.attention_head_size

    @property
    def ffn(self) -> int:
        return self.layer.intermediate.dense.out_features

    def attention_out(self) -> torch.Tensor:
        return self.layer.attention.output.dense.weight.detach()[None]

    def ffn_out(self) -> torch.Tensor:
        return self.layer.output.dense.weight.detach()[None]

    def keep_units(self, keep: torch.Tensor, out: torch.Tensor | None = None) -> None:
        s, cols = self.self_attn, head_index(keep, self.unit_width)
        s.query, s.key, s.value = (
            linear_rows(s.query, cols),
            linear_rows(s.key, cols),
            linear_rows(s.value, cols),
        )
        s.num_attention_heads, s.all_head_size = len(keep), len(cols)
        dense = self.layer.attention.output
        dense.dense = linear_cols(dense.dense, cols, out)

    def keep_channels(self, keep: torch.Tensor, out: torch.Tensor | None = None) -> None:
        inter, output = self.layer.intermediate, self.layer.output
        inter.dense = linear_rows(inter.dense, keep[0])
        output.dense = linear_cols(output.dense, keep[0], out)

    def capture(self, kind: str, sink: Sink) -> Callable[[], None]:
        module = (
            self.layer.attention.output.dense if kind == "attention" else self.layer.output.dense
        )
        return input_hook(module, sink)


def hf_families() -> list[tuple[type[nn.Module], type[LayerSurgery]]]:
    llama = (LlamaDecoderLayer, Qwen2DecoderLayer, Qwen3DecoderLayer, MistralDecoderLayer)
    return [
        *((cls, LlamaSurgery) for cls in llama),
        (GPT2Block, GPT2Surgery),
        (BertLayer, BertSurgery),
    ]
