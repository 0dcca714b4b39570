"""Splitting an interaction or relevance log into train / valid / test parquet files.

Five methods, all deterministic (same input and seed -> the same rows on each side):

- ``random``: rows shuffled by ``seed``, cut at the given fractions.
- ``order``: the rows as the files hold them (files in name order), cut at the fractions:
  for logs written in time order without a timestamp column (Criteo's day files: the
  last day tests).
- ``time``: rows ordered by a timestamp column (ties by ``tiebreak`` columns, then row
  order); the first fraction trains, the last tests.
- ``leave-last-out``: per user, interactions ordered by (time, item, row); the latest
  goes to ``test`` and, with ``valid=True``, the one before it to ``valid``. A user needs
  one more interaction than held out rows (one left in train), otherwise all theirs train.
- ``group``: every row of a group (e.g. a query string) on one side:
  ``int(md5(value)[:8], 16) % 100`` against the fractions in whole percent (qbqtc's
  protocol for ``seed=0``; another seed salts the hash with ``"<seed>:"``).

Inside each part, rows keep their input order. Parts are written as parquet with page
checksums (:func:`write_parts`). ``recis split`` is the command-line form.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.orc as paorc
import pyarrow.parquet as pq

from recis.errors import ConfigError, DataError

from . import jsonl, libsvm, nested, partitions
from .csv_options import CsvOptions
from .sources import SUFFIXES, resolve_paths

Method = Literal["random", "order", "time", "leave-last-out", "group"]
METHODS: tuple[str, ...] = ("random", "order", "time", "leave-last-out", "group")
GROUP_BUCKETS = 100


def part_names(fractions: Sequence[float]) -> list[str]:
    """``train, test`` for two fractions, ``train, valid, test`` for three; ``train`` for
    one (``[1]``: the whole input, a copy as parquet of a log that comes split)."""
    if len(fractions) == 1:
        return ["train"]
    if len(fractions) == 2:
        return ["train", "test"]
    if len(fractions) == 3:
        return ["train", "valid", "test"]
    raise ConfigError(f"split fractions: expected 1, 2 or 3 values, got {len(fractions)}")


def _check_fractions(fractions: Sequence[float]) -> list[float]:
    fr = [float(f) for f in fractions]
    part_names(fr)
    if any(f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ConfigError(f"split fractions: must be >= 0 and sum to 1, got {fr}")
    return fr


def read_input(
    paths: str | os.PathLike | list,
    format: str | None = None,
    columns: list[str] | None = None,
    csv: CsvOptions | None = None,
) -> pa.Table:
    """One Arrow table from parquet / ORC / CSV / TSV / JSON Lines files (a file, directory or
    glob).

    ``format`` None: taken from the first file's suffix (parquet when unknown). ``columns``
    may name fields inside struct columns by their dotted paths (:mod:`recis.io.nested`).
    ``csv``: how CSV/TSV text is parsed (delimiter, header, names, the Criteo and Hive
    layouts), as ``data.csv`` of a run config. The ``key=value`` folders of a partitioned
    table are columns too (:mod:`recis.io.partitions`).
    """
    fmt = format or guess_format(paths)
    files = resolve_paths(paths, SUFFIXES[fmt])
    folders = [partitions.values(f) for f in files]
    types = partitions.types(folders)
    tables = []
    for f, values in zip(files, folders):
        # a requested partition key comes from the folder; unrequested, the file's own wins
        held = None if columns is None else [c for c in columns if c not in values]
        try:
            if fmt in ("parquet", "orc"):
                table = _read_columnar(f, fmt, held)
            elif fmt == "libsvm":
                table = libsvm.read_table(f, held)
            elif fmt == "jsonl":
                table = jsonl.read_table(f, held)
                for c in held or []:
                    if c not in table.column_names:  # a field no line of the file has
                        raise DataError("missing column (no line has it)", path=f, column=c)
            else:
                table = _read_csv_lossless(f, (csv or CsvOptions()).resolved(fmt), held)
        except (pa.ArrowException, OSError) as err:
            raise DataError(f"cannot read as {fmt}: {err}", path=f) from None
        for key, value in values.items():
            if key not in table.column_names and (columns is None or key in columns):
                table = table.append_column(key, partitions.constant(value, types[key], len(table)))
        tables.append(table if columns is None else table.select(columns))
    try:
        return pa.concat_tables(tables, promote_options="default")
    except pa.ArrowException as err:
        raise DataError(f"files have different schemas: {err}", path=str(paths)) from None


def _read_columnar(path: str, fmt: str, columns: list[str] | None) -> pa.Table:
    """A parquet or ORC file (``columns``: only these, nested ones by their dotted paths)."""
    if fmt == "parquet":
        f = pq.ParquetFile(path)
        schema, read = f.schema_arrow, f.read
    else:
        o = paorc.ORCFile(path)
        schema, read = o.schema, o.read
    if columns is None:
        return read()
    found = nested.paths(schema)
    for c in columns:
        if c not in found:
            raise DataError(
                f"missing column (file has {', '.join(schema.names)})", path=path, column=c
            )
    return nested.select(read(columns=nested.read_columns(schema, columns)), columns)


_INTEGER_TEXT = r"^\s*[+-]?[0-9]+\s*$"


def _read_csv_lossless(path: str, o: CsvOptions, columns: list[str] | None) -> pa.Table:
    """A CSV/TSV file with Arrow's type inference, except where it would lose an id.

    A column Arrow infers as int64 stays text when a value does not print back as
    written (``007``, ``+5``); one inferred as double stays text when every value is an
    integer (ids above int64 would collapse: 18446744073709551615 and ...614 are
    one double). Other columns keep Arrow's inferred type, and columns whose type the
    options name keep that type.
    """
    opts, read = o.parse_options(), o.read_options()
    # Hive's \N is NULL in string columns too, as the reader reads it
    nulls: dict = {"strings_can_be_null": True} if o.layout == "hive" else {}
    conv = o.convert_options(include_columns=columns, column_types=o.column_types, **nulls)
    table = pacsv.read_csv(
        o.open(path), read_options=read, parse_options=opts, convert_options=conv
    )
    numeric = [  # inferred ones: a type the options give (the Criteo layout's) is kept
        f.name
        for f in table.schema
        if (pa.types.is_int64(f.type) or pa.types.is_floating(f.type))
        and f.name not in o.column_types
    ]
    if not numeric:
        return table
    conv = o.convert_options(
        include_columns=numeric, column_types={c: pa.string() for c in numeric}, **nulls
    )
    texts = pacsv.read_csv(
        o.open(path), read_options=read, parse_options=opts, convert_options=conv
    )
    for name in numeric:
        col = table.column(name)
        valid = pc.is_valid(col)
        text = pc.filter(texts.column(name), valid)
        if pa.types.is_int64(col.type):
            lossy = not pc.all(pc.equal(pc.cast(pc.filter(col, valid), pa.string()), text)).as_py()
        else:
            lossy = len(text) > 0 and pc.all(pc.match_substring_regex(text, _INTEGER_TEXT)).as_py()
        if lossy:  # Arrow's nulls ("", "NA", ...) stay null
            kept = pc.if_else(valid, texts.column(name), pa.scalar(None, pa.string()))
            table = table.set_column(table.schema.get_field_index(name), name, kept)
    return table


def guess_format(paths: str | os.PathLike | list) -> str:
    """The format of the first path by its suffix; a local file with another suffix
    (``ratings.dat``, ``part-00000``) by its first bytes: parquet's and ORC's magic, JSON
    Lines' ``{``, LIBSVM's ``label index:value ...`` lines, else delimited text (``csv``).
    Parquet when nothing tells."""
    first = str(paths[0] if isinstance(paths, list | tuple) else paths)
    low = first.lower()
    for fmt in ("orc", "tsv", "csv", "jsonl", "libsvm"):
        if low.endswith(SUFFIXES[fmt]) and not low.endswith(".txt"):
            return fmt
    if low.endswith(SUFFIXES["parquet"]) or not os.path.isfile(first):
        return "parquet"
    with pa.input_stream(first, compression="detect") as f:  # ratings.dat.gz: the text
        head = f.read(4096)
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"ORC"):
        return "orc"
    if head.lstrip().startswith(b"{"):
        return "jsonl"
    lines = [t for t in head.split(b"\n")[:-1] if t.strip()] or [head]
    if libsvm.looks_like([t.decode("latin-1") for t in lines[:20]]):
        return "libsvm"  # label [qid:Q] index:value ... (MSLR, the LIBSVM site's logs)
    return "csv" if head and b"\x00" not in head else "parquet"


def _column(table: pa.Table, name: str, what: str) -> np.ndarray:
    """A column as numpy, refusing nulls (DataError names the column and first null row)."""
    if name not in nested.paths(table.schema):  # a field inside a struct by its dotted path
        raise ConfigError(f"split {what}: no column {name!r} (columns: {table.column_names})")
    col = nested.select(table, [name]).column(0).combine_chunks()
    if col.null_count:
        row = int(pc.index(pc.is_null(col), True).as_py())
        raise DataError(f"null {what} value", column=name, row=row)
    if what == "time" and (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        col = _text_times(col)  # a date written as text orders by the date it names
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return np.asarray(col.to_pylist(), dtype=object)
    if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
        col = col.cast(pa.int64())
    return col.to_numpy(zero_copy_only=False)


# dates as logs write them, tried in this order after ISO 8601 (with or without a zone):
# month first before day first, so 03/09/2016 is March 9 unless some day is over 12
TEXT_TIME_FORMATS = (
    "%Y/%m/%d %H:%M:%S",
    "%Y/%m/%d",
    "%m/%d/%Y %H:%M:%S",
    "%m/%d/%Y",
    "%d/%m/%Y %H:%M:%S",
    "%d/%m/%Y",
    "%d.%m.%Y",
    "%m %d, %Y",
    "%b %d, %Y",
    "%B %d, %Y",
    "%d %b %Y",
    "%d-%b-%Y",
)


def _text_times(col: pa.Array) -> pa.Array:
    """Times written as text, as timestamps when one format reads every one of them (ISO 8601
    first, then ``TEXT_TIME_FORMATS``): ``09 13, 2009`` before ``01 02, 2010`` although it
    sorts after it as text. Text that no format reads whole is returned as it is (ordered
    as text, right for any zero-padded year-first form)."""
    for unit in (pa.timestamp("us"), pa.timestamp("us", tz="UTC")):
        try:
            return col.cast(unit)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    text = col.cast(pa.string())
    for fmt in TEXT_TIME_FORMATS:
        times = pc.strptime(text, format=fmt, unit="s", error_is_null=True)
        if times.null_count == 0:
            return times
    return col


def _sort_key(values: np.ndarray) -> np.ndarray:
    """Integer codes that sort like ``values`` (strings included)."""
    if values.dtype == object:
        return np.unique(values, return_inverse=True)[1]
    return values


def _cut(order: np.ndarray, fractions: list[float]) -> dict[str, np.ndarray]:
    """Consecutive slices of ``order`` with sizes ``floor(f * n)``; the last takes the rest."""
    n = len(order)
    names = part_names(fractions)
    bounds = [0, *(int(np.floor(c * n + 1e-9)) for c in np.cumsum(fractions)[:-1]), n]
    return {name: np.sort(order[lo:hi]) for name, lo, hi in zip(names, bounds[:-1], bounds[1:])}


def split_random(n: int, fractions: Sequence[float], seed: int = 0) -> dict[str, np.ndarray]:
    """Row indices of each part: a seeded permutation of ``n`` rows cut at ``fractions``."""
    fr = _check_fractions(fractions)
    return _cut(np.random.default_rng(seed).permutation(n), fr)


def split_by_time(
    table: pa.Table, time: str, fractions: Sequence[float], tiebreak: Sequence[str] = ()
) -> dict[str, np.ndarray]:
    """Row indices of each part: ordered by ``time`` (then ``tiebreak``, then row), earliest first."""
    fr = _check_fractions(fractions)
    keys = [_sort_key(_column(table, c, "tiebreak")) for c in reversed(tiebreak)]
    order = np.lexsort([np.arange(table.num_rows), *keys, _sort_key(_column(table, time, "time"))])
    return _cut(order, fr)


def split_leave_last_out(
    table: pa.Table, user: str, time: str, item: str | None = None, valid: bool = False
) -> dict[str, np.ndarray]:
    """Row indices of ``train``, (``valid``,) ``test``: each user's latest row(s) held out.

    Rows are ordered per user by (``time``, ``item``, row index); the last one is ``test``,
    the one before it ``valid`` when asked. Users with too few rows keep them all in train.
    """
    users = _sort_key(_column(table, user, "user"))
    keys = [np.arange(table.num_rows)]
    if item is not None:
        keys.append(_sort_key(_column(table, item, "item")))
    order = np.lexsort([*keys, _sort_key(_column(table, time, "time")), users])
    u = users[order]
    last = np.r_[u[1:] != u[:-1], True]  # the last row of each user's run
    start = np.r_[True, u[1:] != u[:-1]]
    run_id = np.cumsum(start) - 1
    run_len = np.bincount(run_id)[run_id]
    held = 2 if valid else 1
    enough = run_len > held  # at least one row left to train on
    is_test = last & enough
    is_valid = np.zeros_like(is_test)
    if valid:
        is_valid[:-1] = is_test[1:] & (u[:-1] == u[1:])
    parts = {"train": np.sort(order[~(is_test | is_valid)])}
    if valid:
        parts["valid"] = np.sort(order[is_valid])
    parts["test"] = np.sort(order[is_test])
    return parts


def group_bucket(value: object, seed: int = 0) -> int:
    """``int(md5(str(value))[:8], 16) % 100``; a non-zero seed salts the string first."""
    text = str(value) if seed == 0 else f"{seed}:{value}"
    return int(hashlib.md5(text.encode("utf-8")).hexdigest()[:8], 16) % GROUP_BUCKETS


def split_by_group(
    table: pa.Table, group: str, fractions: Sequence[float], seed: int = 0
) -> dict[str, np.ndarray]:
    """Row indices of each part; all rows of one ``group`` value land in the same part."""
    fr = _check_fractions(fractions)
    values = _column(table, group, "group")
    uniq, inverse = np.unique(values, return_inverse=True)
    buckets = np.array([group_bucket(v, seed) for v in uniq], dtype=np.int64)[inverse]
    edges = np.round(np.cumsum(fr) * GROUP_BUCKETS).astype(np.int64)
    part = np.searchsorted(edges, buckets, side="right")
    return {name: np.flatnonzero(part == i) for i, name in enumerate(part_names(fr))}


def split_table(
    table: pa.Table,
    method: Method,
    *,
    fractions: Sequence[float] = (0.8, 0.2),
    seed: int = 0,
    time: str | None = None,
    tiebreak: Sequence[str] = (),
    user: str | None = None,
    item: str | None = None,
    valid: bool = False,
    group: str | None = None,
) -> dict[str, pa.Table]:
    """``{part: table}`` by ``method``; see the module docstring for each method's rule."""

    def need(value: str | None, flag: str) -> str:
        if value is None:
            raise ConfigError(f"split --by {method}: {flag} is required")
        return value

    if method == "random":
        idx = split_random(table.num_rows, fractions, seed)
    elif method == "order":
        idx = _cut(np.arange(table.num_rows), _check_fractions(fractions))
    elif method == "time":
        idx = split_by_time(table, need(time, "--time"), fractions, tiebreak)
    elif method == "leave-last-out":
        idx = split_leave_last_out(table, need(user, "--user"), need(time, "--time"), item, valid)
    elif method == "group":
        idx = split_by_group(table, need(group, "--group"), fractions, seed)
    else:
        raise ConfigError(f"split --by: unknown method {method!r} (one of {', '.join(METHODS)})")
    return {name: table.take(pa.array(rows, type=pa.int64())) for name, rows in idx.items()}


def write_parts(parts: dict[str, pa.Table], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``out_dir/<part>.parquet`` (zstd, page checksums); returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, table in parts.items():
        path = out / f"{name}.parquet"
        tmp = path.with_name(f".{name}.parquet.tmp")
        pq.write_table(table, tmp, compression="zstd", write_page_checksum=True)
        os.replace(tmp, path)  # a reader never sees a half-written part
        paths[name] = path
    return paths


def split_files(
    input: str | os.PathLike | list,
    out_dir: str | os.PathLike,
    method: Method,
    *,
    format: str | None = None,
    csv: CsvOptions | None = None,
    **options: Any,
) -> dict[str, int]:
    """Read ``input`` (``format`` and ``csv`` as :func:`read_input`), split it (options as
    :func:`split_table`), write the parts.

    Returns ``{part: rows}``.
    """
    parts = split_table(read_input(input, format, csv=csv), method, **options)
    write_parts(parts, out_dir)
    return {name: t.num_rows for name, t in parts.items()}
