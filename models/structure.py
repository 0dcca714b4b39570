"""Narrower transformer layers: keep some attention heads and FFN channels of a layer.

Structured pruning (``recis.prune``, SlimGPT) makes a model smaller and dense: a layer keeps
``heads`` of its attention heads (their query/key/value rows and output-projection columns)
and ``ffn`` of its FFN channels (up/gate rows, down-projection columns). This module does the
surgery, one :class:`LayerSurgery` per layer family, and rebuilds a pruned model from its
config: ``ModelConfig.structure`` maps a layer's module path to its kept shape
(``{"hetero.0": {"heads": 6, "ffn": 180}}``) and :func:`apply_structure` shrinks a freshly
built model to it before its checkpoint loads.

Families: HHFT's :class:`~recis.models.hhft.HeterogeneousLayer` (heads shared by all
blocks, FFN channels per block: each block's :class:`~recis.models.hhft.GroupedLinear` is
narrowed) and :class:`~recis.models.hhft.HiformerLayer` (heads shared by all tokens, with
their slices of the composite key/value projection; FFN channels per token), and the
``transformers`` decoder/encoder layers of
LLaMA-style models (LLaMA, Qwen2, Qwen3, Mistral; grouped-query attention prunes whole
key/value groups), GPT-2 and BERT. Everything else (embeddings, norms, model width) is kept.

Weights are given in the ``[G, out, in]`` layout of a linear map ``y = W x`` for ``G``
groups (HHFT: token blocks or tokens; one group elsewhere).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from recis.errors import CheckpointError, ConfigError

from .hhft import HHFT, GroupedLinear, HeterogeneousLayer, HiformerLayer
from .surgery import (
    LayerSurgery,
    Sink,
    head_index,
    linear_cols,
    linear_rows,
)


def _linears(grouped: nn.Module) -> list[nn.Linear]:
    """The per-group ``nn.Linear`` maps of a :class:`GroupedLinear`."""
    assert isinstance(grouped, GroupedLinear)
    return [cast(nn.Linear, lin) for lin in grouped.linears]


def _replace(grouped: nn.Module, g: int, linear: nn.Linear) -> None:
    assert isinstance(grouped, GroupedLinear)
    grouped.linears[g] = linear


def _stack(grouped: nn.Module) -> torch.Tensor:
    """The per-group weights of a :class:`GroupedLinear`: ``[G, out, in]``."""
    return torch.stack([lin.weight.detach() for lin in _linears(grouped)])


def _grouped_hook(grouped: GroupedLinear, sink: Sink) -> Callable[[], None]:
    """Inputs of a :class:`GroupedLinear` with each token's group (its ``tokens`` argument,
    when given, names the tokens ``x`` holds)."""

    def hook(_: nn.Module, args: tuple[Any, ...]) -> None:
        tokens = args[1] if len(args) > 1 and args[1] is not None else None
        groups = grouped.groups if tokens is None else [grouped.groups[t] for t in tokens]
        sink(args[0], torch.tensor(groups))

    return grouped.register_forward_pre_hook(hook).remove


class _GroupedSurgery(LayerSurgery):
    """What HHFT's two layers share: heads (``heads``, per-group ``q`` and ``o``) and the FFN
    (``ffn_in``, ``ffn_out``), all :class:`GroupedLinear`."""

    layer: HeterogeneousLayer | HiformerLayer

    def __init__(self, layer: HeterogeneousLayer | HiformerLayer) -> None:
        self.layer = layer
        self.groups = len(_linears(layer.ffn_out))

    @property
    def units(self) -> int:
        return self.layer.heads

    @property
    def unit_width(self) -> int:
        return _linears(self.layer.q)[0].out_features // self.layer.heads

    def attention_out(self) -> torch.Tensor:
        return _stack(self.layer.o)

    @property
    def ffn(self) -> int:
        return _linears(self.layer.ffn_out)[0].in_features

    def ffn_out(self) -> torch.Tensor:
        return _stack(self.layer.ffn_out)

    def keep_channels(self, keep: torch.Tensor, out: torch.Tensor | None = None) -> None:
        f_in, f_out = self.layer.ffn_in, self.layer.ffn_out
        for g, (up, down) in enumerate(zip(_linears(f_in), _linears(f_out))):
            _replace(f_in, g, linear_rows(up, keep[g]))
            _replace(f_out, g, linear_cols(down, keep[g], None if out is None else out[g : g + 1]))

    def capture(self, kind: str, sink: Sink) -> Callable[[], None]:
        return _grouped_hook(self.layer.o if kind == "attention" else self.layer.ffn_out, sink)

    def _keep_heads(
        self, rows: list[nn.Module], cols: torch.Tensor, out: torch.Tensor | None
    ) -> None:
        """Keep rows ``cols`` of every group of the :class:`GroupedLinear` maps ``rows`` and the
        same columns of ``o`` (``out [G, d, len(cols)]``: the OBS-updated ones)."""
        heads = len(cols) // self.unit_width  # the head width, read before q narrows
        for proj in rows:
            for g, lin in enumerate(_linears(proj)):
                _replace(proj, g, linear_rows(lin, cols))
        for g, lin in enumerate(_linears(self.layer.o)):
            o = linear_cols(lin, cols, None if out is None else out[g : g + 1])
            _replace(self.layer.o, g, o)
        self.layer.heads = heads


class HeterogeneousSurgery(_GroupedSurgery):
    """HHFT's heterogeneous layer: heads shared by all blocks, FFN channels per block."""

    def keep_units(self, keep: torch.Tensor, out: torch.Tensor | None = None) -> None:
        layer = self.layer
        assert isinstance(layer, HeterogeneousLayer)
        self._keep_heads([layer.q, layer.k, layer.v], head_index(keep, self.unit_width), out)


class HiformerSurgery(_GroupedSurgery):
    """HHFT's Hiformer layer: heads shared by all tokens, FFN channels per token.

    Its keys and values come from one composite projection ``kv`` of all tokens (output
    ``[2 N, d_attn]``: N key tokens, then N value tokens, each ``heads`` slices of
    ``d_attn / heads``). Our reading of a structured head reduction: head ``j`` goes with its
    query rows in every token's ``q``, its output columns in every token's ``o`` and its
    slice of every key and value token in ``kv``'s output rows; the head width stays, so the
    attention of the kept heads is unchanged (the same as zeroing head ``j``'s output).
    With ``kv_rank`` the second factor's rows are narrowed.
    """

    def _kv_out(self) -> nn.Linear:
        """The linear map that writes the keys and values (``kv``, or its second factor)."""
        layer = self.layer
        assert isinstance(layer, HiformerLayer)
        kv = layer.kv[-1] if isinstance(layer.kv, nn.Sequential) else layer.kv
        assert isinstance(kv, nn.Linear)
        return kv

    def keep_units(self, keep: torch.Tensor, out: torch.Tensor | None = None) -> None:
        layer, cols = self.layer, head_index(keep, self.unit_width)
        assert isinstance(layer, HiformerLayer)
        width = self.units * self.unit_width  # d_attn before
        kv = self._kv_out()
        tokens = torch.arange(kv.out_features // width)  # 2 N key and value tokens
        rows = (tokens[:, None] * width + cols[None, :]).reshape(-1)
        if isinstance(layer.kv, nn.Sequential):
            layer.kv[-1] = linear_rows(kv, rows)
        else:
            layer.kv = linear_rows(kv, rows)
        self._keep_heads([layer.q], cols, out)


class MLPHiddenSurgery(LayerSurgery):
    """One hidden layer of an MLP (``nn.Sequential`` of ``Linear``, ``ReLU``, ``Dropout``,
    :class:`~recis.models.layers.MLP`): its channels are the rows of the ``Linear`` at
    ``index`` and the columns of the next ``Linear``, an FFN without attention (HHFT's task
    heads). Our reading: SlimGPT prunes transformer FFNs; the heads' hidden layers are the
    same map (linear, ReLU, linear), so they are pruned by the same OBS channel rule."""

    def __init__(self, mlp: nn.Sequential, index: int) -> None:
        self.mlp, self.index = mlp, index
        after = [j for j in range(index + 1, len(mlp)) if isinstance(mlp[j], nn.Linear)]
        if not isinstance(mlp[index], nn.Linear) or not after:
            raise ConfigError(f"prune: layer {index} of the MLP is not a hidden linear layer")
        self.next = after[0]

    @property
    def units(self) -> None:
        return None  # no attention

    @property
    def unit_width(self) -> int:
        return 0

    def attention_out(self) -> torch.Tensor:
        raise ConfigError("prune: an MLP hidden layer has no attention heads")

    def keep_units(self, keep: torch.Tensor, out: torch.Tensor | None = None) -> None:
        raise ConfigError("prune: an MLP hidden layer has no attention heads")

    @property
    def ffn(self) -> int:
        return cast(nn.Linear, self.mlp[self.index]).out_features

    def ffn_out(self) -> torch.Tensor:
        return cast(nn.Linear, self.mlp[self.next]).weight.detach()[None]

    def keep_channels(self, keep: torch.Tensor, out: torch.Tensor | None = None) -> None:
        up, down = cast(nn.Linear, self.mlp[self.index]), cast(nn.Linear, self.mlp[self.next])
        self.mlp[self.index] = linear_rows(up, keep[0])
        self.mlp[self.next] = linear_cols(down, keep[0], out)

    def capture(self, kind: str, sink: Sink) -> Callable[[], None]:
        def hook(_: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            sink(args[0].reshape(-1, 1, args[0].shape[-1]), None)  # rows as one-token rows

        return self.mlp[self.next].register_forward_pre_hook(hook).remove


def _head_layers(name: str, model: HHFT) -> list[tuple[str, LayerSurgery]]:
    """The hidden layers of HHFT's task heads (``heads.{task}.{index}``), each an FFN."""
    prefix = f"{name}." if name else ""
    out: list[tuple[str, LayerSurgery]] = []
    for t, head in enumerate(model.heads):
        assert isinstance(head, nn.Sequential)
        linears = [i for i, m in enumerate(head) if isinstance(m, nn.Linear)]
        out += [(f"{prefix}heads.{t}.{i}", MLPHiddenSurgery(head, i)) for i in linears[:-1]]
    return out


def _hf_families() -> list[tuple[type[nn.Module], type[LayerSurgery]]]:
    """The transformers layer classes with a surgery; none unless transformers is loaded
    (a model cannot hold its layers otherwise, and importing it costs seconds)."""
    if "transformers" not in sys.modules:
        return []
    from .structure_hf import hf_families

    return hf_families()


def prunable_layers(model: nn.Module) -> list[tuple[str, LayerSurgery]]:
    """Every prunable layer of ``model`` with its module path, in forward order."""
    families: list[tuple[type[nn.Module], type[LayerSurgery]]] = [
        (HeterogeneousLayer, HeterogeneousSurgery),
        (HiformerLayer, HiformerSurgery),
        *_hf_families(),
    ]
    out, heads = [], []
    for name, module in model.named_modules():
        if isinstance(module, HHFT):  # its task heads run after its transformer layers
            heads += _head_layers(name, module)
        for cls, surgery in families:
            if isinstance(module, cls):
                out.append((name, surgery(module)))  # type: ignore[call-arg]  # each takes its layer
                break
    return out + heads


def apply_structure(model: nn.Module, structure: dict[str, dict[str, int]]) -> None:
    """Shrink ``model``'s layers to the kept shapes of ``structure`` (module path -> shape)."""
    layers = dict(prunable_layers(model))
    for name, shape in structure.items():
        if name not in layers:
            raise ConfigError(
                f"model.structure: {name!r} is not a prunable layer of this model; "
                f"known: {sorted(layers)}"
            )
        layers[name].resize(shape, name)


def structure_of(model: nn.Module) -> dict[str, dict[str, int]]:
    """The kept shape of every prunable layer (``ModelConfig.structure``)."""
    return {name: s.shape() for name, s in prunable_layers(model)}


# beside a pruned transformers model's save_pretrained files: its per-layer kept shapes
STRUCTURE_FILE = "recis_structure.json"


def _read_structure(path: Path) -> dict[str, dict[str, int]]:
    record = path / STRUCTURE_FILE
    if not record.is_file():
        raise CheckpointError(f"{record}: missing (not written by recis prune)")
    try:
        structure = json.loads(record.read_text())["structure"]
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{record}: not a structure record: {err}") from None
    if not isinstance(structure, dict):
        raise CheckpointError(f"{record}: 'structure' is not a mapping")
    return structure


def _unprefixed(names: list[str], known: set[str], prefix: str) -> dict[str, str]:
    """``name -> name`` for names of the model, ``name -> name without prefix`` for names of
    the whole model when only its base (``prefix``: ``base_model_prefix + "."``) is built."""
    out = {}
    for name in names:
        if name in known or not name.startswith(prefix):
            out[name] = name
        else:
            out[name] = name[len(prefix) :]
    return out


def load_pruned_hf(
    path: str | Path, dtype: torch.dtype = torch.float32, base: bool = False
) -> nn.Module:
    """A ``transformers`` model that ``recis.prune.hf.save_pruned`` wrote to ``path``
    (``save_pretrained`` + ``recis_structure.json``): built from its config, narrowed to the
    saved shapes, then its weights loaded. ``base``: the base model alone (``AutoModel``,
    as ``LLMTower`` uses it; a causal LM's head is left out), else the saved architecture
    class (e.g. ``LlamaForCausalLM``). In eval mode, ``dtype``."""
    import transformers
    from safetensors.torch import load_file

    path = Path(path)
    structure = _read_structure(path)
    config = transformers.AutoConfig.from_pretrained(str(path))
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = None if base or not arch else getattr(transformers, arch, None)
    model = cls(config) if cls is not None else transformers.AutoModel.from_config(config)
    prefix = f"{model.base_model_prefix}."
    layers = {name for name, _ in prunable_layers(model)}
    names = _unprefixed(list(structure), layers, prefix)
    apply_structure(model, {names[k]: v for k, v in structure.items()})
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no *.safetensors weights")
    saved: dict[str, torch.Tensor] = {}
    for f in files:
        saved.update(load_file(str(f)))
    own = model.state_dict()
    keys = _unprefixed(list(saved), set(own), prefix)
    # a base model built from a whole model's files leaves the head (lm_head...) out
    state = {keys[k]: v for k, v in saved.items() if not base or keys[k] in own}
    missing, unexpected = model.load_state_dict(state, strict=False)
    model.tie_weights()
    own = model.state_dict()
    loaded = {own[k].data_ptr() for k in state if k in own}
    untied = [k for k in missing if own[k].data_ptr() not in loaded]
    if unexpected or untied:
        raise CheckpointError(
            f"{path}: weights do not match the pruned model: missing {untied[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return model.to(dtype).eval()
