"""Readers: files -> :class:`~recis.io.batch.Batch` iterators."""

from __future__ import annotations

import glob as globlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recis.errors import DataError
from recis.features import Schema

from .batch import Batch
from .convert import to_batch


def resolve_paths(
    paths: str | os.PathLike | list, suffixes: tuple[str, ...] = (".parquet",)
) -> list[str]:
    """Expand a file, a directory, a glob, or a list of those into a sorted file list."""
    items = paths if isinstance(paths, list | tuple) else [paths]
    out: list[str] = []
    for item in items:
        item = str(item)
        if any(ch in item for ch in "*?["):
            matches = sorted(globlib.glob(item))
            if not matches:
                raise DataError("glob matched no file", path=item)
            out.extend(matches)
        elif os.path.isdir(item):
            found = sorted(
                str(p)
                for p in Path(item).rglob("*")
                if p.is_file() and p.suffix in suffixes and not p.name.startswith((".", "_"))
            )
            if not found:
                raise DataError(f"directory has no {'/'.join(suffixes)} file", path=item)
            out.extend(found)
        elif os.path.isfile(item):
            out.append(item)
        else:
            raise DataError("no such file or directory", path=item)
    return out


class ParquetReader:
    """Reads parquet files into batches of ``batch_size`` rows.

    With ``shuffle``, file order and rows within each file are permuted by
    ``seed`` and the epoch number.

    Args:
        paths: file, directory, glob or list.
        schema: which columns become which features.
        batch_size: rows per batch (the last batch of a file may be shorter).
        shuffle: permute files and rows.
        seed: shuffle seed.
    """

    def __init__(
        self,
        paths: str | list,
        schema: Schema,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
    ) -> None:
        self.files = resolve_paths(paths)
        self.schema = schema
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self._batch = 0  # batches yielded so far in this epoch
        self._skip = 0  # batches to skip on the next iteration (resume)

    def state_dict(self) -> dict[str, int]:
        """Reading position: epoch and batches already yielded in it."""
        return {"epoch": self.epoch, "batch": self._batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue at ``state``: the next iteration skips the batches already read.

        Exact because the shuffle order depends only on ``seed`` and the epoch.
        """
        self.epoch = int(state["epoch"])
        self._skip = self._batch = int(state["batch"])

    def _read(self, path: str) -> pa.Table:
        try:
            return pq.read_table(path, columns=self.schema.columns)
        except (pa.ArrowInvalid, OSError) as err:
            missing = [
                c for c in self.schema.columns if f"'{c}'" in str(err) or f" {c} " in str(err)
            ]
            if missing:
                raise DataError("missing column", path=path, column=missing[0]) from None
            raise DataError(f"cannot read parquet: {err}", path=path) from None

    def __iter__(self) -> Iterator[Batch]:
        rng = np.random.default_rng([self.seed, self.epoch])
        files = list(self.files)
        if self.shuffle:
            files = [files[i] for i in rng.permutation(len(files))]
        skip, self._skip, self._batch = self._skip, 0, 0
        for path in files:
            if skip:
                rows = pq.ParquetFile(path).metadata.num_rows
                n = -(-rows // self.batch_size)
                if skip >= n:  # skip the whole file, keeping the shuffle stream in step
                    if self.shuffle:
                        rng.permutation(rows)
                    skip -= n
                    self._batch += n
                    continue
            table = self._read(path)
            order = rng.permutation(table.num_rows) if self.shuffle else None
            for start in range(0, table.num_rows, self.batch_size):
                if skip:
                    skip -= 1
                    self._batch += 1
                    continue
                self._batch += 1
                if order is not None:
                    rb = table.take(pa.array(order[start : start + self.batch_size]))
                else:
                    rb = table.slice(start, self.batch_size)
                yield to_batch(rb.combine_chunks().to_batches()[0], self.schema, path, start)
        self.epoch += 1
        self._batch = 0
