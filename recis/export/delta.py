"""Delta exports: only the table rows that changed since a base version.

``delta.safetensors`` holds, per hashed table ``t``: ``t.ids`` (sorted) the ids whose row is
new or changed, their rows (``t.weights`` or ``t.q``/``t.scale``/``t.bias``) after row 0
(the fallback row, always carried), and ``t.removed`` the base's ids gone since (evicted).
A ``mapper: none`` table is carried whole. Applying a delta to its base's tables gives,
exactly, the tables a full export of the same checkpoint writes.

A version may hold several table files (**parts**, :class:`TablePart`): DLRM one
(``tables``), a two-tower version one per tower and kind (``query.tables``,
``query.sequence``, ``item.tables``, ...). A delta version (its manifest's ``delta``:
``{base, rows}``) writes each part as a delta against the same part of its base, and is
loaded through its chain of bases (:func:`version_chain`, :func:`load_part`). The DLRM
exporter and the tower exporter both write their parts with :func:`write_part`.

Shapes: ``N`` ids, ``D`` dim.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from recis.errors import CheckpointError, ConfigError

from .manifest import read_manifest
from .publish import is_ready, read_latest
from .tables import TableInfo, read_tables, save_tables

DELTA = "delta.safetensors"  # DLRM's delta file (a two-tower part's: ``<part>.delta.safetensors``)
MAX_CHAIN = 100  # bases a version may load through (a longer chain: export a full version)


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


@dataclass(frozen=True)
class TablePart:
    """One table file of a version: ``key`` names it (its full file is
    ``<key>.safetensors``), ``locate`` reads from a manifest the file the version holds for
    it (``None``: the version has no such tables) and its tables' entries."""

    key: str
    locate: Callable[[dict[str, Any]], tuple[str | None, list[TableInfo]]]


Chain = list[tuple[Path, dict[str, Any]]]  # (version folder, its manifest), full version first


def version_chain(version_dir: Path, manifest: dict[str, Any]) -> Chain:
    """``version_dir`` and the bases its tables are loaded through: the full version first,
    ``version_dir`` last. Each base must be READY, match its manifest (sha256) and have the
    version's table encoding, else a CheckpointError naming it."""
    chain: Chain = [(version_dir, manifest)]
    while (delta := chain[0][1].get("delta")) and len(chain) <= MAX_CHAIN:
        base_dir = version_dir.parent / str(delta["base"])
        if not is_ready(base_dir):
            raise CheckpointError(
                f"{chain[0][0]}: the delta's base {base_dir} is missing or not READY"
            )
        base = read_manifest(base_dir)
        if base.get("int8_embeddings") != manifest.get("int8_embeddings"):
            raise CheckpointError(
                f"{chain[0][0]}: the delta's base {base_dir} has int8_embeddings="
                f"{base.get('int8_embeddings')}, not {manifest.get('int8_embeddings')}"
            )
        chain.insert(0, (base_dir, base))
    if chain[0][1].get("delta"):
        raise CheckpointError(f"{version_dir}: more than {MAX_CHAIN} delta bases (or a cycle)")
    return chain


def load_part(chain: Chain, part: TablePart) -> dict[str, torch.Tensor]:
    """The full tensors of ``part`` of the chain's last version: the full version's file
    with each delta of the chain applied in turn ({} when the version has no such tables)."""
    folder, manifest = chain[0]
    file, _ = part.locate(manifest)
    if file is None:
        return {}
    tensors = read_tables(folder / file)
    for folder, manifest in chain[1:]:
        file, infos = part.locate(manifest)
        if file is None:
            return {}
        tensors = apply_delta(tensors, load_file(str(folder / file)), infos)
    return tensors


@dataclass(frozen=True)
class DeltaBase:
    """The version a delta export is written against, with its chain of bases."""

    name: str
    chain: Chain


def delta_base(out: Path, int8: bool) -> DeltaBase:
    """The version ``out/latest`` names, READY, verified, in the encoding ``int8`` (a delta
    keeps its base's encoding), and its chain of bases."""
    name = read_latest(out)
    if name is None or not is_ready(out / name):
        raise ConfigError(f"--delta: {out} has no READY latest version to be the delta's base")
    manifest = read_manifest(out / name)
    if manifest.get("int8_embeddings") != int8:
        raise ConfigError(
            f"--delta: base {name} has int8_embeddings={manifest.get('int8_embeddings')}: "
            "a delta keeps its base's encoding (export a full version)"
        )
    return DeltaBase(name, version_chain(out / name, manifest))


def _layout(infos: list[TableInfo]) -> list[tuple[str, int, bool]]:
    return [(t.name, t.dim, t.mapped) for t in infos]


def write_part(
    folder: Path,
    part: TablePart,
    tables: tuple[dict[str, torch.Tensor], list[TableInfo]],
    base: DeltaBase | None,
) -> tuple[str, dict[str, int] | None]:
    """Write ``part``'s ``tables`` (tensors, entries) into ``folder``: in full
    (``<key>.safetensors``), or, given a ``base``, as the delta against the base's same part
    (``<key>.delta.safetensors``; DLRM's: ``delta.safetensors``). Returns the file's name and
    the rows the delta carries per table (None for a full file)."""
    tensors, infos = tables
    if base is None:
        name = f"{part.key}.safetensors"
        save_tables(folder / name, tensors)
        return name, None
    base_file, base_infos = part.locate(base.chain[-1][1])
    if base_file is None or _layout(base_infos) != _layout(infos):
        have = [t.name for t in base_infos] if base_file else "absent"
        raise ConfigError(
            f"--delta: base {base.name}'s {part.key} tables are {have}, not "
            f"{[t.name for t in infos]} (same names, dims, mappers): export a full version"
        )
    delta, rows = make_delta(load_part(base.chain, part), tensors, infos)
    name = DELTA if part.key == "tables" else f"{part.key}.delta.safetensors"
    save_tables(folder / name, delta)
    return name, rows
