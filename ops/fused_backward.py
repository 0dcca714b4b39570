"""Faster CPU backward for fbgemm TBEs with a fused SGD, Adagrad or row-wise Adagrad update.

fbgemm's CPU backward for ``EXACT_SGD`` / ``EXACT_ADAGRAD`` /
``EXACT_ROWWISE_ADAGRAD`` first sorts every table's ids into CSC form (radix
sort), table after table. On the issue's shapes (26 tables, 16K ids each, ~26%
distinct) that is ~42 ms of a ~68 ms training step on 2 cores.
``csrc/fused_backward.cpp`` does the same arithmetic without the sort: a small
hash map per table collects the distinct rows in first-seen order, each row's
gradient is summed in the order its ids occur (the order fbgemm's stable sort
keeps, so SGD and Adagrad results are bit-identical; row-wise Adagrad follows
fbgemm's reference arithmetic, which its JIT kernel vectorises, so it agrees to
float rounding), and tables run in parallel. One thread, the engine benchmark's
shapes (26 tables x 100K rows, dim 64, batch 2048 x 8 ids): row-wise backward
65.6 ms in fbgemm against 29.8 here; with the gradient rows prefetched, the native
call takes 17.6 ms (row-wise), 14.5 (SGD), 21.9 (Adagrad) per step of the
collection (docs/embedding.md).

The forward stays fbgemm's (the TBE module is called under ``no_grad``); only
the backward is replaced, through :class:`FusedCpuLookup`. Weights and
optimizer state stay in the TBE's own buffers, so checkpoints, torchrec
sharding and everything reading the TBE see no difference.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from fbgemm_gpu.split_table_batched_embeddings_ops_common import PoolingMode

_X86 = platform.machine() in ("x86_64", "AMD64")
_OPT_CODE = {
    EmbOptimType.EXACT_SGD: 0,
    EmbOptimType.EXACT_ADAGRAD: 1,
    EmbOptimType.EXACT_ROWWISE_ADAGRAD: 2,
}
_EMPTY = torch.zeros(0)
_EMPTY_I64 = torch.zeros(0, dtype=torch.int64)


def _cpu_ok() -> bool:
    """x86: the CPU has AVX2 and FMA (the flags the kernel is built with)."""
    if not _X86:
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx2" in flags and "fma" in flags


def native_backward() -> Any:
    """The C++ kernel (``ops/csrc/fused_backward.cpp``), or None when it does not apply.

    Built at install time (``make native``, see :mod:`recis.ops.build`; the flags
    are there) and only loaded here, never compiled. A missing or stale build
    raises a one-line :class:`~recis.errors.NativeBuildError` saying how to
    rebuild. None (fbgemm's own backward runs) with ``RECIS_NATIVE=0`` or on an
    x86 CPU without AVX2/FMA.
    """
    from .build import native  # not at import: `python -m recis.ops.build` runs it

    return native("fused_backward", _cpu_ok)


def supports(tbe: Any) -> bool:  # a TBE: fbgemm's attributes are untyped
    """Whether :class:`FusedCpuLookup` can replace ``tbe``'s backward.

    CPU TBEs with ``EXACT_SGD``, ``EXACT_ADAGRAD`` or ``EXACT_ROWWISE_ADAGRAD`` and no
    weight decay of their own
    (fbgemm's CPU kernels, like this one, apply none; recis's table groups build their
    TBEs without it and add the decay to the gradient, see
    :meth:`recis.embedding.FbgemmTableGroup._lookup`), with the kernel built.
    """
    return (
        tbe.weights_host.numel() > 0
        and tbe.optimizer in _OPT_CODE
        and tbe.optimizer_args.weight_decay == 0.0
        and not tbe.optimizer_args.gradient_clipping
        and native_backward() is not None
    )


class FusedCpuLookup(torch.autograd.Function):
    """fbgemm forward, recis backward: ``apply(tbe, indices, offsets, psw)``.

    Shapes as the TBE's: ``indices`` int64 ``[N]`` feature-major, ``offsets``
    int64 ``[F * B + 1]``, ``psw`` float ``[N]`` or None (no gradient to it);
    returns ``[B, sum D]`` pooled or ``[N, D]`` for pooling none. The backward
    updates the TBE's weights (and Adagrad state) in place and returns no
    gradient, as fbgemm's fused optimizers do.
    """

    @staticmethod
    def forward(
        ctx: Any,
        placeholder: torch.Tensor,
        tbe: torch.nn.Module,
        indices: torch.Tensor,
        offsets: torch.Tensor,
        psw: torch.Tensor | None,
    ) -> torch.Tensor:
        indices = indices.to(torch.int64)
        offsets = offsets.to(torch.int64)
        out = tbe(indices, offsets, per_sample_weights=psw)  # autograd is off in here
        ctx.tbe, ctx.indices, ctx.offsets, ctx.psw = tbe, indices, offsets, psw
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, ...]:
        tbe = ctx.tbe
        state = tbe.optimizer != EmbOptimType.EXACT_SGD  # Adagrad's momentum (row-wise: 1/row)
        nobag = tbe.pooling_mode == PoolingMode.NONE
        native_backward().fused_backward(
            grad.float().contiguous(),
            tbe.weights_host.data,
            tbe.momentum1_host.data if state else _EMPTY,
            tbe.weights_offsets,
            tbe.momentum1_offsets if state else _EMPTY_I64,
            tbe.D_offsets,
            tbe.hash_size_cumsum,
            ctx.indices,
            ctx.offsets,
            _EMPTY if ctx.psw is None else ctx.psw.float(),
            int(tbe.pooling_mode),  # fbgemm's PoolingMode is an IntEnum
            tbe.max_D if nobag else 0,
            float(tbe.learning_rate_tensor.item()),
            float(tbe.optimizer_args.eps),
            _OPT_CODE[tbe.optimizer],
        )
        return None, None, None, None, None


def fused_lookup(
    tbe: torch.nn.Module,
    indices: torch.Tensor,
    offsets: torch.Tensor,
    per_sample_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``tbe(indices, offsets, per_sample_weights)`` with the faster backward when it applies."""
    if (
        torch.is_grad_enabled()
        and supports(tbe)
        and (per_sample_weights is None or not per_sample_weights.requires_grad)
    ):
        return FusedCpuLookup.apply(
            tbe.placeholder_autograd_tensor, tbe, indices, offsets, per_sample_weights
        )
    return tbe(indices, offsets, per_sample_weights=per_sample_weights)
