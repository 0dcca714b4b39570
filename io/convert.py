"""Arrow record batch -> :class:`~recis.io.batch.Batch`, following a :class:`~recis.features.Schema`."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recis.errors import DataError
from recis.features import DenseFeature, Schema, SparseFeature

from .batch import Batch


def _column(rb: pa.RecordBatch, name: str, path: str | None) -> pa.Array:
    idx = rb.schema.get_field_index(name)
    if idx < 0:
        raise DataError("missing column", path=path, column=name)
    return rb.column(idx)


def _first_bad_row(mask: np.ndarray, offset: int) -> int:
    return offset + int(np.flatnonzero(mask)[0])


def _dense(
    rb: pa.RecordBatch, feats: list[DenseFeature], path: str | None, offset: int
) -> torch.Tensor:
    out = np.empty((rb.num_rows, len(feats)), dtype=np.float32)
    for j, f in enumerate(feats):
        col = _column(rb, f.source, path)
        if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
            raise DataError(f"expected a number column, got {col.type}", path=path, column=f.source)
        v = col.to_numpy(zero_copy_only=False).astype(np.float32, copy=True)
        v[np.isnan(v)] = f.fill
        if f.transform == "log":
            v = np.log1p(np.maximum(v, 0.0))
        elif f.transform == "standardize":
            v = (v - f.mean) / f.std
        out[:, j] = v
    return torch.from_numpy(out)


def _ids(
    rb: pa.RecordBatch, f: SparseFeature, path: str | None, offset: int
) -> tuple[np.ndarray, np.ndarray]:
    """Values and per-row lengths of one id feature."""
    col = _column(rb, f.source, path)
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy().astype(np.int64)
        values = col.flatten()
        if f.max_len is not None and lengths.size and lengths.max() > f.max_len:
            # keep the first max_len of each row
            starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
            keep = np.minimum(lengths, f.max_len)
            take = np.concatenate([np.arange(s, s + k) for s, k in zip(starts, keep)])
            values = values.take(pa.array(take))
            lengths = keep
    else:
        valid = col.is_valid().to_numpy(zero_copy_only=False)
        lengths = valid.astype(np.int64)
        values = col.filter(pa.array(valid)) if not valid.all() else col
    if not pa.types.is_integer(values.type):
        raise DataError(f"expected integer ids, got {values.type}", path=path, column=f.source)
    return values.to_numpy(zero_copy_only=False).astype(np.int64, copy=False), lengths


def _labels(
    rb: pa.RecordBatch, schema: Schema, path: str | None, offset: int
) -> dict[str, torch.Tensor]:
    labels = {}
    for spec in schema.labels:
        col = _column(rb, spec.source, path)
        if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
            raise DataError(
                f"expected a number column, got {col.type}", path=path, column=spec.source
            )
        v = col.to_numpy(zero_copy_only=False).astype(np.float32)
        bad = np.isnan(v)
        if bad.any():
            raise DataError(
                "null or NaN label", path=path, column=spec.source, row=_first_bad_row(bad, offset)
            )
        labels[spec.name] = torch.from_numpy(v)
    return labels


def to_batch(rb: pa.RecordBatch, schema: Schema, path: str | None = None, offset: int = 0) -> Batch:
    """Convert one record batch. ``offset`` is the row of ``rb[0]`` within ``path`` (for errors)."""
    values, lengths = [], []
    for f in schema.sparse:
        v, n = _ids(rb, f, path, offset)
        values.append(v)
        lengths.append(n)
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=[f.name for f in schema.sparse],
        values=torch.from_numpy(np.concatenate(values))
        if values
        else torch.empty(0, dtype=torch.int64),
        lengths=torch.from_numpy(np.concatenate(lengths))
        if lengths
        else torch.empty(0, dtype=torch.int64),
    )
    return Batch(
        sparse=kjt,
        dense=_dense(rb, schema.dense, path, offset),
        labels=_labels(rb, schema, path, offset),
    )
