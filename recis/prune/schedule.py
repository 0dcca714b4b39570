"""Per-layer pruning ratios: uniform, or SlimGPT's incremental (logarithmic in depth).

Layer-wise pruning feeds each layer the outputs of the already pruned layers before it, so
errors accumulate with depth: SlimGPT prunes shallow layers less and deep layers more, the
ratio growing with the logarithm of the depth, the overall ratio kept.

Our reading (the paper gives the shape, not the constants): layer ``i`` of ``L`` gets
``r_i = r (1 - s) + b ln(1 + i) / ln(L)`` with ``b`` such that ``mean(r_i) = r``; ``s`` (the
``spread``, default 0.5) is how far below ``r`` the first layer starts. Ratios are clipped
to ``[0, 0.95]``; the mean of the clipped ratios is what the layers get.
"""

from __future__ import annotations

import math
from typing import Literal

from recis.errors import ConfigError

Schedule = Literal["uniform", "incremental"]


def layer_ratios(
    ratio: float, layers: int, schedule: Schedule = "uniform", spread: float = 0.5
) -> list[float]:
    """The pruning ratio of each of ``layers`` layers, first to last; their mean is ``ratio``."""
    if not 0 <= ratio < 1:
        raise ConfigError(f"prune.ratio: {ratio} must be in [0, 1)")
    if not 0 <= spread <= 1:
        raise ConfigError(f"prune.spread: {spread} must be in [0, 1]")
    if schedule == "uniform" or layers <= 1:
        if schedule not in ("uniform", "incremental"):
            raise ConfigError(f"prune.schedule: {schedule!r} is not uniform or incremental")
        return [ratio] * layers
    if schedule != "incremental":
        raise ConfigError(f"prune.schedule: {schedule!r} is not uniform or incremental")
    shape = [math.log(1 + i) / math.log(layers) for i in range(layers)]
    b = ratio * spread / (sum(shape) / layers)
    return [min(0.95, max(0.0, ratio * (1 - spread) + b * s)) for s in shape]


def removal_counts(
    ratios: list[float], units: list[int], steps: list[int] | None = None
) -> list[int]:
    """How many of each layer's ``units`` (heads, or channels per group) its ratio removes,
    the total as close to ``sum(r_i u_i)`` as whole units allow: each layer gets
    ``floor(r_i u_i)``, the layers with the largest remainders one more (ties: the deeper
    layer first; at least one unit kept in each layer).

    Rounding each layer on its own loses the total where units are few: 30% of 8 heads
    rounds to 2 (25%) in every layer; over three such layers 7 of 24 heads go (29%).

    ``steps[i]``: layer ``i`` removes, and so keeps, a multiple of ``steps[i]`` units (kept
    widths in whole SIMD vectors, :func:`align_steps`); a layer with fewer than two steps of
    units, or not a whole number of them, uses 1. A layer gets its extra step where that
    brings the total closer to the model's share.
    """
    steps = [
        s if s > 1 and u % s == 0 and u >= 2 * s else 1
        for s, u in zip(steps or [1] * len(units), units)
    ]
    want = [r * u for r, u in zip(ratios, units)]
    share = sum(want)
    counts = [min(u - s, max(0, math.floor(w / s) * s)) for w, u, s in zip(want, units, steps)]
    short = [(w - c) / s for w, c, s in zip(want, counts, steps)]
    for i in sorted(range(len(units)), key=lambda i: (-short[i], -i)):
        total, step = sum(counts), steps[i]
        if counts[i] + step <= units[i] - step and total + step - share < share - total:
            counts[i] += step
    return counts


def align_steps(align: int, widths: list[int]) -> list[int]:
    """Units per step so that ``k`` steps of units ``widths[i]`` columns wide are a multiple
    of ``align`` columns: ``align / gcd(align, width)`` (``align`` <= 1: 1)."""
    if align <= 1:
        return [1] * len(widths)
    return [align // math.gcd(align, w) for w in widths]
