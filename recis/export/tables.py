"""Embedding tables of an export: packed from a trained collection, looked up at serving.

One safetensors file ``tables.safetensors`` holds, for each table ``t``:

- ``t.ids`` int64 ``[N]``: the live ids, sorted (the id -> row map's keys);
- ``t.rows`` int64 ``[N]``: the row of each id in ``t.weights`` (the map's values): always
  ``1..N`` (ids sorted, rows in id order), so not stored in the file but rebuilt on load;
- ``t.weights`` ``[R, D]``: fp32 rows; row 0 is the fallback row that ids without a row read
  (as in training: unknown or not admitted ids), or, with INT8, ``t.q`` uint8 ``[R, D]`` and
  ``t.scale`` / ``t.bias`` fp16 ``[R]`` (row-wise: ``w = q * scale + bias``).

A ``mapper: none`` table stores its whole weight matrix and no ids (ids are rows).

Shapes: ``N`` live ids, ``R`` stored rows, ``D`` dim, ``B`` batch, ``F`` features.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recis.embedding import HashedEmbeddingCollection
from recis.errors import ConfigError, DataError

ROWS = ".rows"


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row-wise asymmetric INT8: ``[R, D]`` fp32 -> (q uint8 ``[R, D]``, scale, bias fp16
    ``[R]``); ``dequantize_rows`` gives back ``w`` within ``scale / 2`` per value (plus the
    fp16 rounding of scale and bias)."""
    lo = w.min(dim=1).values.half()
    hi = w.max(dim=1).values
    # scale and bias as stored (fp16), so the codes are chosen against what is read back
    scale = ((hi - lo.float()) / 255.0).half()
    safe = torch.where(scale.float() > 0, scale.float(), torch.ones_like(hi))
    q = torch.round((w - lo.float()[:, None]) / safe[:, None]).clamp_(0, 255).to(torch.uint8)
    return q, scale, lo


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``[R, D]`` fp32 rows from :func:`quantize_rows`'s codes."""
    return q.float() * scale.float()[:, None] + bias.float()[:, None]


@dataclass
class TableInfo:
    """What the manifest says of one table."""

    name: str
    dim: int
    pooling: str  # sum | mean | none (a sequence table)
    mapped: bool  # ids go through the id -> row map (mapper: hash), else ids are rows
    features: list[str]
    ids: int  # live ids (mapped) or rows (not mapped)


def pack_tables(
    ec: HashedEmbeddingCollection, int8: bool = False, sequences: bool = False
) -> tuple[dict[str, torch.Tensor], list[TableInfo]]:
    """The tensors of ``tables.safetensors`` and each table's manifest entry, from the
    collection's public row API (``live_rows``, ``export_embeddings``' layout).
    ``sequences``: the collection's tables are per-position (pooling ``none``) ones, read by
    :class:`SequenceLookup`."""
    out: dict[str, torch.Tensor] = {}
    infos: list[TableInfo] = []
    state = ec.state_dict()
    for name, cfg in ec.tables.items():
        if cfg.pooling == "none" and not sequences:
            raise ConfigError(
                f"model.tables.{name}.pooling: 'none' (sequence) tables do not export"
            )
        mapped = name in ec.mappers
        if mapped:
            rows = ec.live_rows(name)
            ids, order = torch.sort(rows["ids"])
            fallback = state[f"fallback_{name}"].float().cpu()
            weights = torch.cat([fallback[None], rows["weights"].float()[order]])
            out[f"{name}.ids"] = ids.contiguous()
            out[f"{name}.rows"] = torch.arange(1, len(ids) + 1, dtype=torch.int64)
        else:
            weights = _direct_weights(ec, name)
            ids = torch.arange(weights.shape[0])
        if int8:
            q, scale, bias = quantize_rows(weights)
            out.update({f"{name}.q": q, f"{name}.scale": scale, f"{name}.bias": bias})
        else:
            out[f"{name}.weights"] = weights.contiguous()
        feats = ec.where_features(name)
        infos.append(TableInfo(name, cfg.dim, cfg.pooling, mapped, list(feats), len(ids)))
    return out, infos


def _direct_weights(ec: HashedEmbeddingCollection, name: str) -> torch.Tensor:
    """All rows of a ``mapper: none`` table, through ``export_embeddings`` (the only public
    reader of unmapped weights): written to a scratch file and read back."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "all.safetensors"
        ec.export_embeddings(path)
        return load_file(str(path))[f"{name}.weights"].float()


class TableLookup:
    """Serving-side tables: raw ids in, pooled embeddings ``[B, F, D]`` out (features in the
    given order), the way the trained collection looks them up in eval mode.

    Every table's rows sit in one matrix (``[sum of R, D]``, one offset per table) so that a
    batch is pooled by one ``embedding_bag`` call: each call is a parallel region, and on a
    busy machine waking its threads costs far more than the lookup itself."""

    def __init__(
        self, tensors: dict[str, torch.Tensor], infos: list[TableInfo], features: list[str]
    ) -> None:
        self.infos = {t.name: t for t in infos}
        self.table_of = {f: t.name for t in infos for f in t.features}
        self.features = features
        self.ids: dict[str, torch.Tensor] = {}  # sorted ids (mapped tables)
        self.row_of: dict[str, torch.Tensor] = {}  # their rows
        self.size: dict[str, int] = {}
        self.base: dict[str, int] = {}
        parts: list[torch.Tensor] = []
        for t in infos:
            if f"{t.name}.weights" in tensors:
                w = tensors[f"{t.name}.weights"].float()
            else:
                q, s, b = (tensors[f"{t.name}.{k}"] for k in ("q", "scale", "bias"))
                w = dequantize_rows(q, s, b)
            if t.mapped:
                self.ids[t.name] = tensors[f"{t.name}.ids"]
                self.row_of[t.name] = tensors[f"{t.name}.rows"]
            self.base[t.name] = sum(p.shape[0] for p in parts)
            self.size[t.name] = w.shape[0]
            parts.append(w)
        self.weights = torch.cat(parts) if parts else torch.zeros(0, 0)  # [sum of R, D]
        self.mean = torch.tensor(
            [self.infos[self.table_of[f]].pooling == "mean" for f in features], dtype=torch.bool
        )

    def rows(self, table: str, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``[N]`` of ``ids`` ``[N]`` in ``table``: ids without a row read row 0 (the
        fallback)."""
        keys = self.ids.get(table)
        if keys is None:  # mapper: none
            n = self.size[table]
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n):
                raise DataError(f"ids must be in [0, {n}) (mapper: none)", column=table)
            return ids
        if not len(keys):
            return torch.zeros_like(ids)
        pos = torch.searchsorted(keys, ids).clamp_(max=len(keys) - 1)
        return torch.where(keys[pos] == ids, self.row_of[table][pos], torch.zeros_like(pos))

    def pooled(self, kjt: KeyedJaggedTensor) -> torch.Tensor:
        """``[B, F, D]`` pooled embeddings of the KJT's features (sum or mean per table)."""
        jt = kjt.to_dict()
        idx, lengths = [], []
        for f in self.features:
            t, j = self.table_of[f], jt[f]
            idx.append(self.rows(t, j.values().to(torch.int64)) + self.base[t])
            lengths.append(j.lengths().to(torch.int64))
        b = kjt.stride()
        lens = torch.cat(lengths)  # [F * B], feature-major
        offsets = torch.zeros(len(lens), dtype=torch.int64)
        torch.cumsum(lens[:-1], 0, out=offsets[1:])
        out = F.embedding_bag(torch.cat(idx), self.weights, offsets, mode="sum")  # [F * B, D]
        out = out.view(len(self.features), b, -1)
        if bool(self.mean.any()):  # mean pooling: the sum over the bag's length (empty: 0)
            div = lens.view(len(self.features), b, 1).clamp(min=1).to(out.dtype)
            out = torch.where(self.mean[:, None, None], out / div, out)
        return out.transpose(0, 1)  # [B, F, D]


class SequenceLookup:
    """Serving-side per-position rows of list-of-ids features (behaviour sequences), as
    :class:`recis.models.layers.SequenceEmbedding` gives them in eval mode: per feature
    ``values [B, L, D]`` (0 at padding) and ``mask [B, L]``, ``L`` its ``max_len``; the
    features side by side: ``[B, sum L, D]`` and ``[B, sum L]``.

    ``lengths``: ``{feature: max_len}`` in the model's order (all features of one dim)."""

    def __init__(
        self, tensors: dict[str, torch.Tensor], infos: list[TableInfo], lengths: dict[str, int]
    ) -> None:
        self.lookup = TableLookup(tensors, infos, list(lengths))
        self.lengths = lengths
        self.dim = infos[0].dim if infos else 1

    def padded(self, kjt: KeyedJaggedTensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(values [B, sum L, D], mask [B, sum L])`` of the KJT's sequence features."""
        lk, b = self.lookup, kjt.stride()
        jt = kjt.to_dict()
        values, masks = [], []
        for f, length in self.lengths.items():
            t = lk.table_of[f]
            ids, lens = jt[f].values().to(torch.int64), jt[f].lengths().to(torch.int64)
            rows = lk.weights[lk.rows(t, ids) + lk.base[t]]  # [nnz, D]
            row_of = torch.repeat_interleave(torch.arange(b), lens)  # [nnz]
            starts = torch.cumsum(lens, 0) - lens
            pos = torch.arange(len(ids)) - starts[row_of]  # position inside its row
            keep = pos < length  # a longer row keeps its first ``length`` ids, as padding does
            out = torch.zeros(b, length, rows.shape[1])
            out[row_of[keep], pos[keep]] = rows[keep]
            values.append(out)
            masks.append(torch.arange(length)[None, :] < lens[:, None])
        return torch.cat(values, 1), torch.cat(masks, 1)


def save_tables(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write ``tensors`` without the ``t.rows`` maps: row ``i + 1`` holds the ``i``-th
    smallest id, so the map is derived data (rebuilt by :func:`read_tables`; the file's
    sha256 in the manifest covers the ids it is rebuilt from)."""
    save_file({k: v for k, v in tensors.items() if not k.endswith(ROWS)}, str(path))


def read_tables(path: Path) -> dict[str, torch.Tensor]:
    """The tensors :func:`save_tables` wrote, each mapped table's ``t.rows`` rebuilt
    (``1..N`` in id order; a file that stores its map, written before, keeps it)."""
    tensors = load_file(str(path))
    for key in [k for k in tensors if k.endswith(".ids")]:
        rows = key[: -len(".ids")] + ROWS
        if rows not in tensors:
            tensors[rows] = torch.arange(1, len(tensors[key]) + 1, dtype=torch.int64)
    return tensors
