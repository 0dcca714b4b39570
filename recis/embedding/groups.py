"""Table groups: tables of one pooling, dtype and optimizer behind one lookup call.

* :class:`FbgemmTableGroup` - fbgemm's ``SplitTableBatchedEmbeddingBagsCodegen``
  (TBE, the kernel torchrec's fused and sharded collections run) with its
  optimizer fused into backward: SGD, Adagrad, row-wise Adagrad.
* :class:`TorchTableGroup` - Adam / AdamW, which fbgemm lacks on CPU: a plain
  ``embedding_bag`` over the rows of the batch, with a gradient hook that
  applies :func:`recis.optim.sparse_adam.adam_update_rows` in backward.

Both take the group's ids as one flat tensor: ``indices`` int64 ``[N]``,
feature-major (all ids of feature 0, then feature 1, ...), ``offsets`` int64
``[F * B + 1]`` and optional ``per_sample_weights`` float ``[N]``, and return
``[B, sum of D]`` (pooled) or ``[N, D]`` (pooling ``none``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from fbgemm_gpu.split_embedding_configs import SparseType
from fbgemm_gpu.split_table_batched_embeddings_ops_common import (
    BoundsCheckMode,
    EmbeddingLocation,
    PoolingMode,
)
from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
    ComputeDevice,
    SplitTableBatchedEmbeddingBagsCodegen,
    WeightDecayMode,
)
from torch import nn

from recis.config import SparseOptimizerConfig
from recis.ops.fused_backward import fused_lookup
from recis.ops.hashing import id_uniform, salt64
from recis.ops.id_mapper_probe import native_kernels
from recis.optim.sparse_adam import AdamHyper, adam_state, adam_update_rows
from recis.optim.spec import resolve_sparse

_POOLING = {"sum": PoolingMode.SUM, "mean": PoolingMode.MEAN, "none": PoolingMode.NONE}
_DTYPE = {"fp32": torch.float32, "fp16": torch.float16}


@dataclass
class TableSlot:
    """One table inside a group: ``rows`` includes the fallback row of mapped tables.

    ``by_id``: rows get their content from the id given them (:meth:`initial_for_ids`),
    so rows without an id are zeros; drawing them would spend the global RNG by capacity
    (and by eviction), making dense init and dropout depend on table sizes.
    """

    name: str
    dim: int
    rows: int
    init: str = "uniform"
    init_scale: float = 0.01
    features: list[str] = field(default_factory=list)
    by_id: bool = False

    def initial(self, n: int, device: torch.device) -> torch.Tensor:
        """``[n, dim]`` float32 fresh rows drawn from this table's init (zeros when
        ``by_id``)."""
        out = torch.empty(n, self.dim, device=device)
        if self.init == "zeros" or self.by_id:
            return out.zero_()
        if self.init == "normal":
            return out.normal_(0.0, self.init_scale)
        return out.uniform_(-self.init_scale, self.init_scale)

    def initial_for_ids(self, ids: np.ndarray, salt: str, device: torch.device) -> torch.Tensor:
        """``[n, dim]`` float32 initial vectors of ``ids``, each a fixed function of
        (``salt``, id): the same on any row, rank or world size."""
        if self.init == "zeros":
            return torch.zeros(len(ids), self.dim, device=device)
        if self.init == "normal":  # Box-Muller over two hashed uniforms per column
            u = id_uniform(ids, 2 * self.dim, salt)
            z = np.sqrt(-2.0 * np.log1p(-u[:, : self.dim])) * np.cos(2 * np.pi * u[:, self.dim :])
        else:
            nat = native_kernels()
            if nat is not None:  # same numbers, ~20x faster than the numpy below
                salt_i = int(np.array(salt64(salt), np.uint64).view(np.int64))
                ids_t = torch.from_numpy(np.ascontiguousarray(ids, np.int64).reshape(-1))
                return nat.id_init_uniform(ids_t, self.dim, salt_i, self.init_scale).to(device)
            z = 2.0 * id_uniform(ids, self.dim, salt) - 1.0
        return torch.from_numpy((z * self.init_scale).astype(np.float32)).to(device)


def _mark_in_backward(param: nn.Parameter, owner: object) -> None:
    # torchrec's convention (apply_optimizer_in_backward): the trainer keeps such
    # parameters away from its dense and sparse torch optimizers.
    param._in_backward_optimizers = [owner]  # type: ignore[attr-defined]  # torchrec's marker, not declared on Parameter


class TableGroup(nn.Module):
    """What both groups share: their tables and settings, and row writes through their
    ``weight(i)`` and ``states(i)``; :meth:`resize` and ``forward`` are each kind's own."""

    def __init__(
        self,
        tables: list[TableSlot],
        pooling: str,
        dtype: str,
        optimizer: SparseOptimizerConfig,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.tables = tables
        self.pooling, self.dtype, self.opt, self.device = pooling, dtype, optimizer, device
        self.feature_names = [f for t in tables for f in t.features]
        self.feature_dims = [t.dim for t in tables for _ in t.features]

    def weight(self, i: int) -> torch.Tensor:
        raise NotImplementedError

    def states(self, i: int) -> list[torch.Tensor]:
        raise NotImplementedError

    def resize(self, i: int, rows: int) -> None:
        """Change table ``i`` to ``rows`` rows, keeping rows and state that still fit."""
        raise NotImplementedError

    @torch.no_grad()
    def reset_rows(self, i: int, rows: torch.Tensor, values: torch.Tensor | None = None) -> None:
        """Fresh init (``values`` ``[n, D]``, or drawn from the table's init) and zero
        optimizer state for ``rows`` of table ``i``."""
        if rows.numel() == 0:
            return
        w = self.weight(i)
        if values is None:
            values = self.tables[i].initial(rows.numel(), w.device)
        w[rows] = values.to(w.dtype)
        for s in self.states(i):
            s[rows] = 0

    @torch.no_grad()
    def set_row(self, i: int, row: int, value: torch.Tensor) -> None:
        """Write ``value`` ``[D]`` into one row and clear its optimizer state."""
        self.weight(i)[row] = value.to(self.weight(i).dtype)
        for s in self.states(i):
            s[row] = 0


class FbgemmTableGroup(TableGroup):
    """Tables updated by an fbgemm fused optimizer, looked up in one TBE call.

    Args:
        tables: the tables, in TBE order; ``features`` of each are its features.
        pooling: ``sum``, ``mean`` or ``none``.
        dtype: ``fp32`` or ``fp16`` weights (outputs are fp32).
        optimizer: ``sgd``, ``adagrad`` or ``rowwise_adagrad`` settings.
        device: where weights live (CPU: ``EmbeddingLocation.HOST``).
        rows_checked: the caller guarantees every index is a row of its table (as the
            collection's mappers do): fbgemm's bounds check is skipped. Otherwise fbgemm's
            default (``WARNING``: an index out of range reads row 0, with a warning).
    """

    def __init__(
        self,
        tables: list[TableSlot],
        pooling: str,
        dtype: str,
        optimizer: SparseOptimizerConfig,
        device: torch.device,
        rows_checked: bool = False,
    ) -> None:
        super().__init__(tables, pooling, dtype, optimizer, device)
        self.bounds_check = BoundsCheckMode.NONE if rows_checked else BoundsCheckMode.WARNING
        self.resolution = resolve_sparse(optimizer, "table_group", device)
        self._build()
        for t, w in zip(self.tables, self._weights):
            w.copy_(t.initial(t.rows, device).to(w.dtype))

    def _build(self) -> None:
        cpu = self.device.type == "cpu"
        loc = EmbeddingLocation.HOST if cpu else EmbeddingLocation.DEVICE
        comp = ComputeDevice.CPU if cpu else ComputeDevice.CUDA
        ftm = [i for i, t in enumerate(self.tables) for _ in t.features]
        self.tbe = SplitTableBatchedEmbeddingBagsCodegen(
            [(t.rows, t.dim, loc, comp) for t in self.tables],
            feature_table_map=ftm,
            # the fused kind and its learning_rate / eps (recis.optim.spec)
            **self.resolution.kwargs,
            optimizer=self.resolution.kind,
            # mean and none run as sums (see forward): fbgemm's CPU MEAN backward drops the
            # 1/L under per-id weights, its CPU NONE backward is 7-35x slower than a SUM
            # lookup of one-id bags (benchmarks/fbgemm_unpooled.py)
            pooling_mode=PoolingMode.SUM,
            weights_precision=SparseType.FP16 if self.dtype == "fp16" else SparseType.FP32,
            output_dtype=SparseType.FP32,
            # fbgemm's CPU kernels ignore weight decay: recis adds it to the gradient
            # itself (:meth:`_lookup`), the same way on every device
            weight_decay=0.0,
            weight_decay_mode=WeightDecayMode.NONE,
            bounds_check_mode=self.bounds_check,
            device=self.device,
        )
        for p in self.tbe.parameters():
            _mark_in_backward(p, self)
        self._cache_views()

    def _cache_views(self) -> None:
        # views into the TBE's flat buffers: stay valid across in-place loads
        self._weights = self.tbe.split_embedding_weights()
        states = self.tbe.split_optimizer_states() if self.opt.name != "sgd" else []
        self._states = [[s for s in per_table] for per_table in states] or [[] for _ in self.tables]

    def weight(self, i: int) -> torch.Tensor:
        """``[rows, D]`` view of table ``i``'s weights."""
        return self._weights[i]

    def states(self, i: int) -> list[torch.Tensor]:
        """Optimizer state views of table ``i`` (``[rows, D]`` or ``[rows]``)."""
        return self._states[i]

    @torch.no_grad()
    def resize(self, i: int, rows: int) -> None:
        """Change table ``i`` to ``rows`` rows, keeping rows and state that still fit."""
        old_w = [w.clone() for w in self._weights]
        old_s = [[s.clone() for s in st] for st in self._states]
        self.tables[i].rows = rows
        self._build()
        for j, t in enumerate(self.tables):
            n = min(old_w[j].shape[0], t.rows)
            self._weights[j][:n] = old_w[j][:n]
            if t.rows > n:
                self._weights[j][n:] = t.initial(t.rows - n, self.device).to(old_w[j].dtype)
            for s, o in zip(self._states[j], old_s[j]):
                s[:n] = o[:n]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._cache_views()

    def forward(
        self,
        indices: torch.Tensor,
        offsets: torch.Tensor,
        per_sample_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[B, sum D]`` pooled, or ``[N, D]`` for pooling ``none`` (per-id weights
        apply to pooling only).

        On CPU, SGD and Adagrad tables take recis's fused backward
        (:mod:`recis.ops.fused_backward`, same numbers as fbgemm's, several times
        faster); other optimizers and CUDA run the TBE as it is.
        """
        if self.pooling == "none":
            return self._unpooled(indices, offsets)
        if self.pooling == "mean":
            per_sample_weights = mean_weights(offsets, per_sample_weights)
        return self._lookup(indices, offsets, per_sample_weights)

    def _lookup(
        self,
        indices: torch.Tensor,
        offsets: torch.Tensor,
        per_sample_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The TBE lookup ``[B, sum D]`` of ``F * B`` bags, with L2 weight decay.

        Decay is lazy L2: each distinct row ``r`` of the batch gets ``weight_decay * w_r``
        added to its gradient, once, inside the same fused update (so Adagrad's state sees
        the decayed gradient, as with ``torch.optim.Adagrad(weight_decay=...)`` on those
        rows). fbgemm's CPU kernels have no decay, so it is done here: every table's
        distinct rows are appended as ``E`` extra bags of one row (after the batch's
        ``B``, on the table's first feature), whose output is ``w_r``; a gradient hook
        gives those bags the gradient ``weight_decay * w_r``.
        """
        wd = self.resolution.lazy_l2
        nf = len(self.feature_names)
        b = (offsets.numel() - 1) // max(nf, 1)
        if not wd or not torch.is_grad_enabled() or b == 0 or indices.numel() == 0:
            return fused_lookup(self.tbe, indices, offsets, per_sample_weights)
        bounds = feature_bounds(offsets, nf)
        lengths = (offsets[1:] - offsets[:-1]).view(nf, b)
        uniq: dict[int, torch.Tensor] = {}  # first feature of a table -> its distinct rows
        f = 0
        for t in self.tables:
            k = len(t.features)
            uniq[f] = _distinct(indices[bounds[f] : bounds[f + k]], t.rows)
            f += k
        e = max(u.numel() for u in uniq.values())
        extra = torch.zeros(nf, e, dtype=lengths.dtype, device=lengths.device)
        parts: list[torch.Tensor] = []
        for f in range(nf):
            parts.append(indices[bounds[f] : bounds[f + 1]])
            if f in uniq:
                extra[f, : uniq[f].numel()] = 1
                parts.append(uniq[f].to(indices.dtype))
        new_lengths = torch.cat([lengths, extra], dim=1).flatten()
        new_offsets = torch.cat([offsets[:1], offsets[:1] + torch.cumsum(new_lengths, 0)])
        psw = per_sample_weights
        if psw is not None:
            pieces: list[torch.Tensor] = []
            for f in range(nf):
                pieces.append(psw[bounds[f] : bounds[f + 1]])
                if f in uniq:
                    pieces.append(psw.new_ones(uniq[f].numel()))
            psw = torch.cat(pieces)
        out = fused_lookup(self.tbe, torch.cat(parts), new_offsets, psw)  # [B + E, sum D]
        if not out.requires_grad:
            return out[:b]
        # the extra bags' outputs are w_r (zeros for empty bags): their gradient wd * w_r
        return _BatchWithDecay.apply(out, b, out[b:].detach() * wd)

    def _unpooled(self, indices: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """``[N, D]``: every id a bag of one in a SUM lookup (feature ``f``'s ``n_f`` ids are
        its first ``n_f`` bags of ``max n_f``; the rest are empty), same rows, same update,
        and fbgemm's pooled backward instead of its slow unpooled one. Without autograd,
        on rows the caller checked: :meth:`_gathered`."""
        nf = len(self.feature_names)
        if not torch.is_grad_enabled() and self.bounds_check == BoundsCheckMode.NONE:
            return self._gathered(indices, feature_bounds(offsets, nf))
        b = (offsets.numel() - 1) // max(nf, 1)
        starts = offsets[:-1:b] if b else offsets.new_zeros(nf)
        n = offsets[b::b] - starts if b else offsets.new_zeros(nf)
        width = int(n.max()) if nf and indices.numel() else 0
        if width == 0:
            return torch.zeros(0, self.feature_dims[0] if nf else 0, device=indices.device)
        i = torch.arange(width, device=offsets.device)
        bags = (starts[:, None] + torch.minimum(i[None], n[:, None])).flatten()
        out = self._lookup(indices, torch.cat([bags, offsets[-1:]]))  # [width, F*D]
        out = out.view(width, nf, -1).transpose(0, 1)  # [F, width, D]
        return out[i[None] < n[:, None]]  # feature-major, as the ids came

    def _gathered(self, indices: torch.Tensor, at: list[int]) -> torch.Tensor:
        """``[N, D]`` without autograd: each table's rows gathered (``at``: feature bounds), the
        same fp32 values as the one-id-bag lookup in 1/6 of its time (docs/embedding.md)."""
        parts, f = [], 0
        for i, t in enumerate(self.tables):
            k = len(t.features)
            parts.append(self.weight(i).index_select(0, indices[at[f] : at[f + k]]))
            f += k
        return (parts[0] if len(parts) == 1 else torch.cat(parts)).to(torch.float32)


class TorchTableGroup(TableGroup):
    """Tables updated by recis's lazy row-wise Adam / AdamW, in backward.

    Weights and moments are buffers (never seen by a torch optimizer); the
    batch's distinct rows are gathered into a leaf tensor whose gradient hook
    updates the table.
    """

    def __init__(
        self,
        tables: list[TableSlot],
        pooling: str,
        dtype: str,
        optimizer: SparseOptimizerConfig,
        device: torch.device,
    ) -> None:
        super().__init__(tables, pooling, dtype, optimizer, device)
        self.hyper = AdamHyper(**resolve_sparse(optimizer, "table_group", device).kwargs)
        for i, t in enumerate(tables):
            self.register_buffer(f"weight_{i}", t.initial(t.rows, device).to(_DTYPE[dtype]))
            for k, v in adam_state(t.rows, t.dim, device).items():
                self.register_buffer(f"{k}_{i}", v)

    def weight(self, i: int) -> torch.Tensor:
        return getattr(self, f"weight_{i}")

    def states(self, i: int) -> list[torch.Tensor]:
        return [getattr(self, f"{k}_{i}") for k in ("exp_avg", "exp_avg_sq", "step")]

    def _state_dict_of(self, i: int) -> dict[str, torch.Tensor]:
        return {k: getattr(self, f"{k}_{i}") for k in ("exp_avg", "exp_avg_sq", "step")}

    @torch.no_grad()
    def resize(self, i: int, rows: int) -> None:
        t = self.tables[i]
        n = min(rows, t.rows)
        for name in ("weight", "exp_avg", "exp_avg_sq", "step"):
            old = getattr(self, f"{name}_{i}")
            new = torch.zeros((rows, *old.shape[1:]), dtype=old.dtype, device=old.device)
            new[:n] = old[:n]
            if name == "weight" and rows > n:
                new[n:] = t.initial(rows - n, old.device).to(old.dtype)
            setattr(self, f"{name}_{i}", new)
        t.rows = rows

    def forward(
        self,
        indices: torch.Tensor,
        offsets: torch.Tensor,
        per_sample_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Same contract as :meth:`FbgemmTableGroup.forward`."""
        nf = len(self.feature_names)
        b = (offsets.numel() - 1) // max(nf, 1)
        bounds = feature_bounds(offsets, nf)
        outs: list[torch.Tensor] = []
        f = 0
        for i, t in enumerate(self.tables):
            k = len(t.features)
            lo, hi = bounds[f], bounds[f + k]
            ids = indices[lo:hi]
            uniq, inv = torch.unique(ids, return_inverse=True)
            sub = self.weight(i)[uniq].float()
            if torch.is_grad_enabled():
                sub.requires_grad_(True)
                sub.register_hook(self._updater(i, uniq))
            for j in range(k):
                a, z = bounds[f + j] - lo, bounds[f + j + 1] - lo
                idx = inv[a:z]
                if self.pooling == "none":
                    outs.append(F.embedding(idx, sub))
                    continue
                off = offsets[(f + j) * b : (f + j + 1) * b + 1] - bounds[f + j]
                psw = (
                    per_sample_weights[lo + a : lo + z] if per_sample_weights is not None else None
                )
                if self.pooling == "mean":  # torch has no weighted mean: a sum with w / L
                    psw = mean_weights(off, psw)
                outs.append(
                    F.embedding_bag(
                        idx,
                        sub,
                        off[:-1],
                        mode="sum",
                        per_sample_weights=psw,
                        include_last_offset=False,
                    )
                    if b
                    else sub.new_zeros(0, t.dim)
                )
            f += k
        return torch.cat(outs, dim=0 if self.pooling == "none" else 1)

    def _updater(self, i: int, uniq: torch.Tensor):
        def hook(grad: torch.Tensor) -> None:
            adam_update_rows(self.weight(i), self._state_dict_of(i), uniq, grad, self.hyper)

        return hook


class _BatchWithDecay(torch.autograd.Function):
    """``apply(out, b, decay)``: the batch's bags ``out[:b]`` ``[B, sum D]``; in backward,
    ``out``'s gradient is theirs with ``decay`` ``[E, sum D]`` below (the extra bags')."""

    @staticmethod
    def forward(ctx: Any, out: torch.Tensor, b: int, decay: torch.Tensor) -> torch.Tensor:
        ctx.decay = decay
        return out[:b].clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return torch.cat([grad, ctx.decay.to(grad.dtype)]), None, None


class GroupDict(nn.ModuleDict):
    """``{group key: TableGroup}``: a ModuleDict (same state-dict keys) whose items are
    typed as table groups, so that callers need no casts."""

    def __getitem__(self, key: str) -> TableGroup:
        group = super().__getitem__(key)
        assert isinstance(group, TableGroup)  # only TableGroups are put in
        return group

    def groups(self) -> list[TableGroup]:
        """The groups in insertion order (``values()``, typed)."""
        return [self[k] for k in self.keys()]


def feature_bounds(offsets: torch.Tensor, nf: int) -> list[int]:
    """Where each of the ``nf`` features' ids start in ``indices``, then the end (zeros: no rows)."""
    b = (offsets.numel() - 1) // max(nf, 1)
    return offsets[::b].tolist() if b else [0] * (nf + 1)


def _distinct(rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """The distinct values of ``rows`` (int ``[N]``, in ``[0, n_rows)``), ascending.

    A mark per table row and one scan when the table is not much larger than the batch
    (several times faster than sorting, ``torch.unique``, which it falls back to)."""
    if n_rows > 32 * rows.numel():
        return torch.unique(rows)
    mark = torch.zeros(n_rows, dtype=torch.bool, device=rows.device)
    mark[rows] = True
    return mark.nonzero().flatten()


def mean_weights(offsets: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Per-id weights ``[N]`` that turn a sum over bags (``offsets`` ``[bags + 1]``) into
    the (weighted) mean ``sum(w * x) / L``, with a gradient that matches it."""
    lens = offsets[1:] - offsets[:-1]
    scale = torch.repeat_interleave(1.0 / lens.clamp(min=1).float(), lens)
    return scale if weights is None else scale * weights.float()


def default_scale(capacity: int) -> float:
    """torchrec's default init bound: ``sqrt(1 / num_embeddings)``."""
    return math.sqrt(1.0 / capacity)
