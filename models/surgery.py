"""The surgery every layer family shares: :class:`LayerSurgery` and narrower linear maps.

Split from :mod:`recis.models.structure` (HHFT's layers, :func:`~recis.models.structure.apply_structure`)
so that :mod:`recis.models.structure_hf` (the ``transformers`` layers) builds on it without
importing the module that imports it: the two import this one, not each other.
Weights are in the ``[G, out, in]`` layout of a linear map ``y = W x`` for ``G`` groups.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import nn

from recis.errors import ConfigError

# called with the inputs of a pruned linear map ``x [B, N, in]`` and each token's group
# ``[N]`` (None: one group)
Sink = Callable[[torch.Tensor, "torch.Tensor | None"], None]


def _linear(old: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A new ``nn.Linear`` holding ``weight [out, in]`` and ``bias`` (dtype/device of ``old``)."""
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    new.to(device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.train(old.training)
    return new


def head_index(units: torch.Tensor, width: int) -> torch.Tensor:
    """Columns of the kept head units (each ``width`` wide, contiguous): ``[len(units) width]``."""
    return (units[:, None] * width + torch.arange(width, device=units.device)).reshape(-1)


class LayerSurgery(ABC):
    """The prunable shape of one transformer layer and how to narrow it.

    ``units``: prunable attention units (heads; key/value groups under grouped-query
    attention), ``None`` when heads cannot be pruned. ``unit_width``: columns of the output
    projection per unit. ``ffn``: FFN channels per group. ``groups``: ``G``.
    """

    groups: int = 1

    @property
    @abstractmethod
    def units(self) -> int | None: ...

    @property
    @abstractmethod
    def unit_width(self) -> int: ...

    @property
    @abstractmethod
    def ffn(self) -> int: ...

    @property
    def narrowest_unit_width(self) -> int:
        """Columns per unit in the narrowest projection it narrows (what the pruner's
        ``align`` rounds): ``unit_width``; one key/value head's under grouped-query attention."""
        return self.unit_width

    @abstractmethod
    def attention_out(self) -> torch.Tensor:
        """Output-projection weight ``[G, out, units * unit_width]``."""

    @abstractmethod
    def ffn_out(self) -> torch.Tensor:
        """Down-projection weight ``[G, out, ffn]``."""

    @abstractmethod
    def keep_units(self, keep: torch.Tensor, out: torch.Tensor | None = None) -> None:
        """Keep attention units ``keep [k]`` (sorted); ``out [G, out, k unit_width]`` replaces
        the output projection's kept columns (the OBS-updated weights)."""

    @abstractmethod
    def keep_channels(self, keep: torch.Tensor, out: torch.Tensor | None = None) -> None:
        """Keep FFN channels ``keep [G, k]`` (sorted, per group); ``out [G, out, k]``
        replaces the down projection's kept columns."""

    @abstractmethod
    def capture(self, kind: str, sink: Sink) -> Callable[[], None]:
        """Call ``sink`` with the inputs of the ``kind`` ("attention" / "ffn") output
        projection at each forward; returns the function that stops it."""

    def shape(self) -> dict[str, int]:
        """The kept shape, as :func:`apply_structure` takes it."""
        out = {"ffn": self.ffn}
        if self.units is not None:
            out["heads"] = self.heads_of(self.units)
        return out

    def heads_of(self, units: int) -> int:
        """Attention heads of ``units`` units (one head per unit unless grouped-query)."""
        return units

    def resize(self, shape: dict[str, int], where: str) -> None:
        """Keep the first heads/channels of ``shape`` (the saved weights load over them)."""
        unknown = set(shape) - {"heads", "ffn"}
        if unknown:
            raise ConfigError(f"model.structure.{where}: unknown keys {sorted(unknown)}")
        if "heads" in shape:
            if self.units is None:
                raise ConfigError(f"model.structure.{where}.heads: this layer's heads are kept")
            per = self.heads_of(1)
            units = shape["heads"] // per
            if units * per != shape["heads"] or not 0 < units <= self.units:
                raise ConfigError(
                    f"model.structure.{where}.heads: {shape['heads']} is not 1..{self.heads_of(self.units)} "
                    f"in steps of {per}"
                )
            self.keep_units(torch.arange(units))
        if "ffn" in shape:
            if not 0 < shape["ffn"] <= self.ffn:
                raise ConfigError(
                    f"model.structure.{where}.ffn: {shape['ffn']} is not 1..{self.ffn}"
                )
            self.keep_channels(torch.arange(shape["ffn"]).expand(self.groups, -1))


def input_hook(module: nn.Module, sink: Sink) -> Callable[[], None]:
    def hook(_: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        sink(args[0], None)

    return module.register_forward_pre_hook(hook).remove


def linear_rows(layer: nn.Linear, rows: torch.Tensor) -> nn.Linear:
    bias = None if layer.bias is None else layer.bias[rows]
    return _linear(layer, layer.weight[rows], bias)


def linear_cols(layer: nn.Linear, cols: torch.Tensor, out: torch.Tensor | None) -> nn.Linear:
    w = layer.weight[:, cols] if out is None else out[0].to(layer.weight)
    return _linear(layer, w, layer.bias)
