"""Fresh rows of many tables written in one native call: each id's initial vector, zero state.

When ids get rows (new, or reused after eviction), each such row must start from the id's
own initial vector (:func:`recis.ops.hashing.id_uniform`'s values, as
``id_init_uniform`` computes them) with a zero optimizer state. Done table by table
that is three small tensor operations per table per step (draw, write, zero), each a
parallel region of its own; on a busy machine every region waits for its slowest
thread. ``init_rows_many`` (``csrc/id_mapper.cpp``) writes them all straight into the
tables in one region, whole tables per thread.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .hashing import salt64
from .id_mapper_probe import native_kernels


@dataclass
class FreshRows:
    """One table's fresh rows: ``weight`` ``[R, D]`` (float or half), its optimizer
    ``states`` (float, ``[R]`` or ``[R, d]``), ``rows`` int64 ``[n]`` and the ``ids``
    int64 ``[n]`` now in them; ``salt`` names the table's initial vectors, ``scale`` is
    their bound (0: zeros)."""

    weight: torch.Tensor
    states: list[torch.Tensor]
    rows: torch.Tensor
    ids: np.ndarray
    salt: str
    scale: float


def native_applies(weight: torch.Tensor, states: list[torch.Tensor]) -> bool:
    """Whether :func:`write_fresh_rows` can write this table's rows (CPU, contiguous,
    float or half weights, float states, native ops built)."""
    return (
        native_kernels() is not None
        and weight.device.type == "cpu"
        and weight.dim() == 2
        and weight.is_contiguous()
        and weight.dtype in (torch.float32, torch.float16)
        and all(
            s.device.type == "cpu" and s.is_contiguous() and s.dtype == torch.float32
            for s in states
        )
    )


def write_fresh_rows(tables: list[FreshRows]) -> None:
    """Write every table's fresh rows (see :class:`FreshRows`) in one native call; each
    table must pass :func:`native_applies`."""
    tables = [t for t in tables if t.rows.numel()]
    if not tables:
        return
    nat = native_kernels()
    assert nat is not None  # native_applies checked it
    states = [s for t in tables for s in t.states]
    owner = [i for i, t in enumerate(tables) for _ in t.states]
    nat.init_rows_many(
        [t.weight for t in tables],
        [t.rows.to(torch.int64).contiguous() for t in tables],
        [torch.from_numpy(np.ascontiguousarray(t.ids, np.int64).reshape(-1)) for t in tables],
        [int(np.array(salt64(t.salt), np.uint64).view(np.int64)) for t in tables],
        [float(t.scale) for t in tables],
        states,
        owner,
    )
