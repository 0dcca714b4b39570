"""Layer-by-layer structured pruning of a model's transformer layers (SlimGPT and baselines).

From the first prunable layer to the last: run the calibration batches through the model
(whose earlier layers are already pruned, so each layer sees the outputs of the pruned
layers before it), accumulate the Hessian of the attention output projection's inputs,
remove the layer's share of heads (batched greedy, grouped Cholesky) with the OBS update,
run the batches again for the FFN down projection's inputs (after the attention pruning),
remove FFN channels (dynamic group size) with the OBS update. The layer is then a smaller
dense layer (:mod:`recis.models.structure`).

Methods (``PruneOptions.method``):

* ``slimgpt``: OBS selection and the OBS weight update;
* ``obs-select``: the same selection, no update (the removed columns simply go);
* ``magnitude``: the heads / channels whose output-projection columns have the smallest
  L2 norm, no update (no calibration data needed).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from recis.errors import ConfigError
from recis.models.structure import LayerSurgery, head_index, prunable_layers

from .obs import (
    HessianAccumulator,
    damped_inverse,
    kept,
    magnitude_channels,
    magnitude_heads,
    prune_channels,
    prune_heads,
)
from .schedule import Schedule, align_steps, layer_ratios, removal_counts

Method = Literal["slimgpt", "obs-select", "magnitude"]
METHODS: tuple[str, ...] = ("slimgpt", "obs-select", "magnitude")


@dataclass
class PruneOptions:
    """What to remove and how.

    ``ratio``: share of heads and of FFN channels removed overall; ``schedule``: how it is
    spread over layers; ``damp``: Hessian damping relative to its mean diagonal;
    ``batch_fraction`` / ``group_fraction``: share of the still-to-remove heads / channels
    taken per greedy round; ``heads`` / ``ffn``: which parts are pruned; ``align``: the
    kept widths (FFN channels; attention units times their columns) are whole multiples of
    ``align`` columns where a layer allows (:func:`~recis.prune.schedule.removal_counts`),
    1 for the plain counts. A projection whose output width is not a whole number of SIMD
    vectors takes the slow path of the CPU matmul: on an AVX2 machine (8 floats) ``[8192,
    64] x [64, 179]`` took 1.9x the time of ``x [64, 176]`` and more than the unpruned 256.
    """

    ratio: float
    method: Method = "slimgpt"
    schedule: Schedule = "uniform"
    spread: float = 0.5
    damp: float = 0.01
    batch_fraction: float = 0.5
    group_fraction: float = 0.5
    heads: bool = True
    align: int = 8
    ffn: bool = True
    # stop each calibration forward at the pruned projection (the layers after it do not
    # matter yet): about half the cost; only for models that call the pruned layer once per
    # batch (a dual tower encodes query and title: it would see the queries alone)
    early_stop: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"prune.method: {self.method!r} is not one of {list(METHODS)}")
        if self.align < 1:
            raise ConfigError(f"prune.align: {self.align} must be >= 1")
        for name in ("batch_fraction", "group_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"prune.{name}: {getattr(self, name)} must be in (0, 1]")


@dataclass
class PruneReport:
    """What was pruned: per layer the ratio asked and the shapes before and after."""

    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0
    seconds: float = 0.0

    def structure(self) -> dict[str, dict[str, int]]:
        """The kept shapes (``ModelConfig.structure``)."""
        return {name: dict(layer["after"]) for name, layer in self.layers.items()}


class _Reached(Exception):
    """Raised by a capture hook to end a calibration forward early."""


class _Calibration:
    """Runs the calibration batches through the model and feeds the captured inputs of one
    projection to a Hessian, without padded positions (the attention mask of the
    ``transformers`` model in use, caught from its call)."""

    def __init__(
        self,
        model: nn.Module,
        batches: Sequence[Any],
        run: Callable[[Any], Any],
        early_stop: bool = False,
    ) -> None:
        self.model, self.batches, self.run = model, batches, run
        self.early_stop = early_stop
        self.mask: torch.Tensor | None = None

    def hessian(self, surgery: LayerSurgery, kind: str, dim: int) -> torch.Tensor:
        acc = HessianAccumulator(surgery.groups, dim)

        def sink(x: torch.Tensor, groups: torch.Tensor | None) -> None:
            b, n = x.shape[0], x.shape[1]
            valid = self.mask if self.mask is not None and self.mask.shape == (b, n) else None
            if groups is None:
                groups = torch.zeros(n, dtype=torch.long)
            groups = groups.to(x.device)
            for g in range(surgery.groups):
                rows = x[:, groups == g]  # [B, n_g, in]
                if valid is not None:
                    rows = rows[valid[:, groups == g].bool()]
                acc.add(rows.reshape(-1, x.shape[-1]), g)
            if self.early_stop:
                raise _Reached

        stops = [surgery.capture(kind, sink), *self._mask_hooks()]
        try:
            with torch.no_grad():
                for batch in self.batches:
                    with contextlib.suppress(_Reached):
                        self.run(batch)
        finally:
            for stop in stops:
                stop()
            self.mask = None
        # a group without rows (HHFT's last Hiformer layer computes the task tokens only) is
        # never used: its H stays 0 and damped_inverse treats its columns as dead
        if max(acc.rows) == 0:
            raise ConfigError("prune: the calibration batches never reached a pruned layer")
        return acc.h

    def _mask_hooks(self) -> list[Callable[[], None]]:
        if "transformers" not in sys.modules:
            return []
        from transformers import PreTrainedModel

        def hook(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self.mask = kwargs.get("attention_mask")

        return [
            m.register_forward_pre_hook(hook, with_kwargs=True).remove
            for m in self.model.modules()
            if isinstance(m, PreTrainedModel)
        ]


def count_params(model: nn.Module) -> int:
    """Dense parameters (hashed embedding rows are not in ``parameters()``)."""
    return sum(p.numel() for p in model.parameters())


def prune_model(
    model: nn.Module,
    options: PruneOptions,
    batches: Iterable[Any] = (),
    run: Callable[[Any], Any] | None = None,
) -> PruneReport:
    """Prune ``model`` in place (smaller dense layers); returns what was done.

    Args:
        model: holds the layers :func:`recis.models.structure.prunable_layers` finds.
        options: ratio, schedule, method.
        batches: calibration batches (kept in memory: they run once per pruned part).
        run: calls the model on one batch (default ``model(batch)``).
    """
    start = time.perf_counter()
    layers = prunable_layers(model)
    if not layers:
        raise ConfigError("prune: the model has no prunable transformer layer")
    calib = _Calibration(model, list(batches), run or model, options.early_stop)
    if options.method != "magnitude" and not calib.batches:
        raise ConfigError(f"prune: method {options.method} needs calibration batches")
    report = PruneReport(params_before=count_params(model))
    model.eval()
    ratios = layer_ratios(options.ratio, len(layers), options.schedule, options.spread)
    heads, channels = _counts(layers, ratios, options.align)
    for (name, surgery), ratio in zip(layers, ratios):
        entry: dict[str, Any] = {"ratio": ratio, "before": surgery.shape()}
        if options.heads and name in heads:
            removed = _prune_attention(surgery, calib, options, heads[name])
            entry["removed_units"] = removed.tolist()
        if options.ffn:
            removed = _prune_ffn(surgery, calib, options, channels[name])
            entry["removed_channels"] = removed.tolist()
        report.layers[name] = {**entry, "after": surgery.shape()}
    report.params_after = count_params(model)
    report.seconds = time.perf_counter() - start
    return report


def _counts(
    layers: list[tuple[str, LayerSurgery]], ratios: list[float], align: int = 1
) -> tuple[dict[str, int], dict[str, int]]:
    """Attention units and FFN channels (per group) each layer loses: the layer's ratio,
    rounded so that the model as a whole loses its share, in steps that keep the widths
    multiples of ``align`` (:func:`removal_counts`)."""
    attn = [
        (name, units, s.narrowest_unit_width, r)
        for (name, s), r in zip(layers, ratios)
        if (units := s.units) is not None
    ]
    steps = align_steps(align, [width for _, _, width, _ in attn])
    counts = removal_counts([r for *_, r in attn], [units for _, units, _, _ in attn], steps)
    heads = {name: c for (name, *_), c in zip(attn, counts)}
    ffn = removal_counts(ratios, [s.ffn for _, s in layers], [align] * len(layers))
    return heads, {name: c for (name, _), c in zip(layers, ffn)}


def _prune_attention(
    surgery: LayerSurgery, calib: _Calibration, options: PruneOptions, remove: int
) -> torch.Tensor:
    """Removes ``remove`` attention units of the layer; returns them ``[remove]``."""
    units = surgery.units
    if remove == 0 or units is None:
        return torch.zeros(0, dtype=torch.long)
    w, width = surgery.attention_out(), surgery.unit_width
    if options.method == "magnitude":
        removed = magnitude_heads(w, width, remove)
        surgery.keep_units(kept(units, removed[None])[0])
        return removed
    hinv = damped_inverse(calib.hessian(surgery, "attention", w.shape[2]), options.damp)
    removed, new_w = prune_heads(
        w,
        hinv,
        width,
        remove,
        update=options.method == "slimgpt",
        batch_fraction=options.batch_fraction,
    )
    keep = kept(units, removed[None])[0]
    out = new_w[:, :, head_index(keep, width)] if options.method == "slimgpt" else None
    surgery.keep_units(keep, out)
    return removed


def _prune_ffn(
    surgery: LayerSurgery, calib: _Calibration, options: PruneOptions, remove: int
) -> torch.Tensor:
    """Removes ``remove`` FFN channels of each group; returns them ``[G, remove]``."""
    if remove == 0:
        return torch.zeros(surgery.groups, 0, dtype=torch.long)
    w = surgery.ffn_out()
    if options.method == "magnitude":
        removed = magnitude_channels(w, remove)
        surgery.keep_channels(kept(surgery.ffn, removed))
        return removed
    hinv = damped_inverse(calib.hessian(surgery, "ffn", w.shape[2]), options.damp)
    removed, new_w = prune_channels(
        w, hinv, remove, update=options.method == "slimgpt", group_fraction=options.group_fraction
    )
    keep = kept(surgery.ffn, removed)
    out = None
    if options.method == "slimgpt":
        out = torch.gather(new_w, 2, keep[:, None, :].expand(-1, new_w.shape[1], -1))
    surgery.keep_channels(keep, out)
    return removed
