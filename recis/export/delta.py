"""Delta exports: only the table rows that changed since a base version.

``delta.safetensors`` holds, per hashed table ``t``: ``t.ids`` (sorted) the ids whose row is
new or changed, their rows (``t.weights`` or ``t.q``/``t.scale``/``t.bias``) after row 0
(the fallback row, always carried), and ``t.removed`` the base's ids gone since (evicted).
A ``mapper: none`` table is carried whole. Applying a delta to its base's tables gives,
exactly, the tables a full export of the same checkpoint writes.

Shapes: ``N`` ids, ``D`` dim.
"""

from __future__ import annotations

import torch

from .tables import TableInfo


def payload_keys(tensors: dict[str, torch.Tensor], table: str) -> list[str]:
    """The per-row tensors of ``table``: ``weights`` (fp32) or ``q``, ``scale``, ``bias``."""
    return ["weights"] if f"{table}.weights" in tensors else ["q", "scale", "bias"]


def _rows_equal(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[N]`` bool: row i of ``a`` equals row i of ``b`` bit for bit."""
    return (a == b).reshape(len(a), -1).all(dim=1)


def make_delta(
    base: dict[str, torch.Tensor], new: dict[str, torch.Tensor], infos: list[TableInfo]
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """The delta tensors from ``base`` to ``new`` (both full table dicts in one encoding)
    and the number of rows it carries per table."""
    out: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    for t in infos:
        keys = payload_keys(new, t.name)
        if not t.mapped:
            out.update({f"{t.name}.{k}": new[f"{t.name}.{k}"] for k in keys})
            counts[t.name] = int(new[f"{t.name}.{keys[0]}"].shape[0])
            continue
        n_ids, n_rows = new[f"{t.name}.ids"], new[f"{t.name}.rows"]
        b_ids, b_rows = base[f"{t.name}.ids"], base[f"{t.name}.rows"]
        if len(b_ids):
            pos = torch.searchsorted(b_ids, n_ids).clamp_(max=len(b_ids) - 1)
            same = b_ids[pos] == n_ids
            for k in keys:
                nb, bb = new[f"{t.name}.{k}"], base[f"{t.name}.{k}"]
                same &= _rows_equal(nb[n_rows], bb[b_rows[pos]])
        else:
            same = torch.zeros(len(n_ids), dtype=torch.bool)
        changed = ~same
        out[f"{t.name}.ids"] = n_ids[changed].contiguous()
        rows = torch.cat([torch.zeros(1, dtype=torch.int64), n_rows[changed]])  # row 0 first
        for k in keys:
            out[f"{t.name}.{k}"] = new[f"{t.name}.{k}"][rows].contiguous()
        out[f"{t.name}.removed"] = b_ids[~torch.isin(b_ids, n_ids)].contiguous()
        counts[t.name] = int(changed.sum())
    return out, counts


def apply_delta(
    base: dict[str, torch.Tensor], delta: dict[str, torch.Tensor], infos: list[TableInfo]
) -> dict[str, torch.Tensor]:
    """``base``'s tables with ``delta`` applied: the full table dict (ids sorted, rows
    ``1..N`` in id order, row 0 the fallback)."""
    out: dict[str, torch.Tensor] = {}
    for t in infos:
        keys = payload_keys(delta, t.name)
        if not t.mapped:
            out.update({f"{t.name}.{k}": delta[f"{t.name}.{k}"] for k in keys})
            continue
        b_ids, b_rows = base[f"{t.name}.ids"], base[f"{t.name}.rows"]
        d_ids = delta[f"{t.name}.ids"]
        gone = torch.isin(b_ids, delta[f"{t.name}.removed"]) | torch.isin(b_ids, d_ids)
        keep_ids, keep_rows = b_ids[~gone], b_rows[~gone]
        ids = torch.cat([keep_ids, d_ids])
        ids, order = torch.sort(ids)
        out[f"{t.name}.ids"] = ids
        out[f"{t.name}.rows"] = torch.arange(1, len(ids) + 1, dtype=torch.int64)
        for k in keys:
            d = delta[f"{t.name}.{k}"]
            stacked = torch.cat([base[f"{t.name}.{k}"][keep_rows], d[1:]])
            out[f"{t.name}.{k}"] = torch.cat([d[:1], stacked[order]]).contiguous()
    return out
