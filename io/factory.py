"""Building readers: from arguments (:func:`make_reader`), a DataConfig (:func:`reader_from_config`),
or parquet files alone (:class:`ParquetReader`)."""

from __future__ import annotations

import os
from typing import Any

from recis.config import DataConfig
from recis.errors import ConfigError
from recis.features import Schema

from .loader import Loader
from .reader import Reader
from .sources import CsvOptions


def make_reader(paths: str | os.PathLike | list, schema: Schema, **kwargs: Any) -> Reader | Loader:
    """A :class:`Reader`, or a :class:`~recis.io.loader.Loader` when ``num_workers`` > 0.

    ``num_workers`` here means DataLoader worker processes (0: read in this
    process with a prefetch thread). Other arguments as :class:`Reader`.
    """
    workers = int(kwargs.pop("num_workers", 0) or 0)
    if workers > 0:
        return Loader(paths, schema, num_workers=workers, **kwargs)
    return Reader(paths, schema, **kwargs)


def reader_from_config(
    data: DataConfig,
    paths: str | os.PathLike | list,
    *,
    train: bool = True,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    rows: str = "all",
) -> Reader | Loader:
    """The reader a :class:`~recis.config.DataConfig` describes (train or eval split).

    Eval readers never shuffle or drop rows and use ``eval_batch_size``. ``rows``: ``all``,
    or with ``data.holdout`` ``fit`` (the rows before the held-out tail) or ``holdout`` (the
    tail, in file order).
    """
    window = {"all": None, "fit": (0.0, 1.0 - data.holdout), "holdout": (1.0 - data.holdout, 1.0)}
    if rows != "all" and not data.holdout:
        raise ConfigError(f"rows {rows!r}: data.holdout is not set")
    csv = CsvOptions.from_config(data.csv)
    return make_reader(
        paths,
        data.schema_,
        batch_size=data.batch_size if train else (data.eval_batch_size or data.batch_size),
        format=data.format,
        shuffle=data.shuffle and train,
        seed=seed,
        rank=rank,
        world_size=world_size,
        shuffle_buffer=data.shuffle_buffer,
        prefetch=data.prefetch,
        nan_policy=data.nan_policy,
        on_bad_row=data.on_bad_row,
        quarantine=data.quarantine,
        max_bad_fraction=data.max_bad_fraction,
        on_missing_column=data.on_missing_column,
        csv=csv,
        drop_last=data.drop_last and train,
        pin_memory=data.pin_memory,
        num_workers=data.num_workers,
        window=window[rows],
    )


class ParquetReader(Reader):
    """A :class:`Reader` of parquet files (``format="parquet"``)."""

    def __init__(
        self,
        paths: str | os.PathLike | list,
        schema: Schema,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            paths, schema, batch_size, format="parquet", shuffle=shuffle, seed=seed, **kwargs
        )
