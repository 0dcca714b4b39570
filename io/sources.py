"""File formats on pyarrow: paths -> readable units with known row counts.

A *unit* is the smallest piece a reader schedules: one parquet row group
(pyarrow.dataset fragments split by row group), one ORC file (pyarrow.orc,
read stripe by stripe) or one CSV/TSV file (pyarrow.csv, streamed). Every unit
knows its row count before any data is read (parquet and ORC footers; CSV
files are counted once with a streaming parse), which is what lets readers
split rows exactly across ranks and workers and seek on resume.
"""

from __future__ import annotations

import glob as globlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.orc as paorc
import pyarrow.parquet as pq

from recis.errors import DataError

SUFFIXES = {
    "parquet": (".parquet", ".pq"),
    "orc": (".orc",),
    "csv": (".csv", ".csv.gz", ".txt"),
    "tsv": (".tsv", ".tsv.gz", ".txt"),
}

# Criteo display-ads layout: label, 13 integer counts, 26 hex categorical values, no header
CRITEO_COLUMNS = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
CRITEO_TYPES = {
    "label": pa.float32(),
    **{f"I{i}": pa.int64() for i in range(1, 14)},
    **{f"C{i}": pa.string() for i in range(1, 27)},
}


_CSV_ROWS: dict[tuple, int] = {}


@dataclass
class CsvOptions:
    """How to parse CSV/TSV text. ``layout="criteo"`` sets the Criteo TSV columns and types."""

    delimiter: str | None = None
    header: bool = True
    column_names: list[str] | None = None
    column_types: dict[str, pa.DataType] = field(default_factory=dict)
    null_values: list[str] | None = None
    layout: str | None = None

    def resolved(self, fmt: str) -> CsvOptions:
        out = CsvOptions(**self.__dict__)
        if out.layout == "criteo":
            out.header = False
            out.column_names = out.column_names or list(CRITEO_COLUMNS)
            out.column_types = {**CRITEO_TYPES, **out.column_types}
            out.delimiter = out.delimiter or "\t"
        out.delimiter = out.delimiter or ("\t" if fmt == "tsv" else ",")
        return out


def _split_uri(item: str, filesystem: pafs.FileSystem | None) -> tuple[pafs.FileSystem, str]:
    if filesystem is not None:
        return filesystem, item
    if "://" in item:
        try:
            return pafs.FileSystem.from_uri(item)
        except (pa.ArrowException, ValueError, OSError) as err:
            raise DataError(f"cannot open filesystem: {err}", path=item) from None
    return pafs.LocalFileSystem(), os.path.abspath(item)


def as_arrow_fs(filesystem: object | None) -> pafs.FileSystem | None:
    """A pyarrow filesystem from a pyarrow or fsspec one (None stays None: local or URI)."""
    if filesystem is None or isinstance(filesystem, pafs.FileSystem):
        return filesystem
    return pafs.PyFileSystem(pafs.FSSpecHandler(filesystem))


def resolve_paths(
    paths: str | os.PathLike | list,
    suffixes: tuple[str, ...] = SUFFIXES["parquet"],
    filesystem: object | None = None,
) -> list[str]:
    """Expand a file, a directory, a glob, or a list of those into a sorted file list.

    Local paths come back absolute; with ``filesystem`` (pyarrow or fsspec) or
    a URI (``s3://...``) paths are listed on that filesystem. Hidden files
    (``.x``, ``_x``) in directories are ignored. Raises DataError naming the
    path when nothing matches or it cannot be listed.
    """
    fs_in = as_arrow_fs(filesystem)
    items = paths if isinstance(paths, list | tuple) else [paths]
    out: list[str] = []
    for raw in items:
        item = str(raw)
        fs, path = _split_uri(item, fs_in)
        if any(ch in path for ch in "*?["):
            if isinstance(fs, pafs.LocalFileSystem):
                matches = sorted(os.path.abspath(p) for p in globlib.glob(path))
            elif filesystem is not None and hasattr(filesystem, "glob"):
                matches = sorted(filesystem.glob(path))
            else:
                raise DataError("globs are supported on local and fsspec filesystems", path=item)
            if not matches:
                raise DataError("glob matched no file", path=item)
            out.extend(matches)
            continue
        try:
            info = fs.get_file_info(path)
        except (pa.ArrowException, OSError) as err:
            raise DataError(f"unreadable path: {err}", path=item) from None
        if info.type == pafs.FileType.Directory:
            sel = pafs.FileSelector(path, recursive=True)
            found = sorted(
                f.path
                for f in fs.get_file_info(sel)
                if f.type == pafs.FileType.File
                and f.base_name.endswith(suffixes)
                and not f.base_name.startswith((".", "_"))
            )
            if not found:
                raise DataError(f"directory has no {'/'.join(suffixes)} file", path=item)
            out.extend(found)
        elif info.type == pafs.FileType.File:
            out.append(path)
        else:
            raise DataError("unreadable path: no such file or directory", path=item)
    return out


@dataclass(frozen=True)
class Unit:
    """``num_rows`` rows of file ``file`` (index into the file list), part ``part``."""

    file: int
    part: int
    num_rows: int
    row0: int = 0  # row of the unit's first row within its file


class Source:
    """One format over a list of files: units, per-file schemas and streamed reads.

    Args:
        files: resolved paths (see :func:`resolve_paths`).
        columns: the columns to read (``Schema.columns``).
        fmt: ``parquet``, ``orc``, ``csv`` or ``tsv``.
        filesystem: pyarrow filesystem (None: local).
        csv: parsing options for CSV/TSV.
        on_invalid_line: CSV lines with the wrong field count go here
            (file, line number, text) when given; otherwise they are a DataError.
    """

    def __init__(
        self,
        files: list[str],
        columns: list[str],
        fmt: str,
        filesystem: pafs.FileSystem | None = None,
        csv: CsvOptions | None = None,
        on_invalid_line: Callable[[str, int | None, str], None] | None = None,
    ) -> None:
        if fmt not in SUFFIXES:
            raise DataError(f"unknown format {fmt!r}; expected one of {sorted(SUFFIXES)}")
        self.files = files
        self.columns = columns
        self.fmt = fmt
        self.fs = filesystem or pafs.LocalFileSystem()
        self.csv = (csv or CsvOptions()).resolved(fmt)
        self.on_invalid_line = on_invalid_line
        self._fragments: dict[int, list[ds.Fragment]] = {}
        self.schemas: dict[int, pa.Schema] = {}
        self.units = self._list_units()

    # -- discovery -------------------------------------------------------------------------
    def _fail(self, path: str, err: Exception, what: str = "corrupt or truncated file") -> None:
        if isinstance(err, DataError):
            raise err
        if isinstance(err, FileNotFoundError | PermissionError):
            what = "unreadable path"
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        line = re.search(r"CSV parse error: Row #(\d+): (.*)", msg)
        if line:  # a CSV line with the wrong number of fields
            raise DataError(f"bad line: {line.group(2)}", path=path, row=int(line.group(1)))
        raise DataError(f"{what}: {msg}", path=path) from None

    def _check_nonempty(self, i: int) -> None:
        path = self.files[i]
        try:
            size = self.fs.get_file_info(path).size
        except (pa.ArrowException, OSError) as err:
            self._fail(path, err)
        if size == 0:
            raise DataError("empty file (0 bytes)", path=path)

    def _list_units(self) -> list[Unit]:
        units: list[Unit] = []
        for i, path in enumerate(self.files):
            self._check_nonempty(i)
            try:
                units.extend(getattr(self, f"_units_{self.fmt.replace('tsv', 'csv')}")(i))
            except (pa.ArrowException, OSError, DataError) as err:
                self._fail(path, err)
        if not any(u.num_rows for u in units):
            raise DataError("no rows in any file", path=self.files[0] if self.files else None)
        return units

    def _units_parquet(self, i: int) -> list[Unit]:
        frag = ds.ParquetFileFormat().make_fragment(self.files[i], filesystem=self.fs)
        frag.ensure_complete_metadata()
        self.schemas[i] = frag.physical_schema
        parts = frag.split_by_row_group()
        self._fragments[i] = parts
        counts = [sum(rg.num_rows for rg in p.row_groups) for p in parts]
        if not parts or sum(counts) == 0:
            raise DataError("empty file (no rows)", path=self.files[i])
        starts = [sum(counts[:k]) for k in range(len(counts))]
        return [Unit(i, k, n, r) for k, (n, r) in enumerate(zip(counts, starts))]

    def _units_orc(self, i: int) -> list[Unit]:
        f = paorc.ORCFile(self.fs.open_input_file(self.files[i]))
        self.schemas[i] = f.schema
        if f.nrows == 0:
            raise DataError("empty file (no rows)", path=self.files[i])
        return [Unit(i, 0, int(f.nrows))]

    def _units_csv(self, i: int) -> list[Unit]:
        # one streaming parse of the first column counts the rows (CSV has no footer); the
        # count is cached by file identity, so forked DataLoader workers and later epochs
        # of readers in this process do not parse the file again
        info = self.fs.get_file_info(self.files[i])
        key = (
            type(self.fs).__name__,
            info.path,
            info.size,
            info.mtime_ns,
            repr(self.csv),
            self.on_invalid_line is None,
        )
        n = _CSV_ROWS.get(key)
        if n is None:
            n = sum(b.num_rows for b in self._open_csv(i, count_only=True))
            _CSV_ROWS[key] = n
        if n == 0:
            raise DataError("empty file (no rows)", path=self.files[i])
        return [Unit(i, 0, n)]

    # -- reading ---------------------------------------------------------------------------
    def _open_csv(
        self, i: int, count_only: bool = False, quiet: bool = False
    ) -> pacsv.CSVStreamingReader:
        o, path = self.csv, self.files[i]

        def invalid(row: pacsv.InvalidRow) -> str:
            # a raise inside this callback is swallowed by Arrow: "error" makes it raise
            # ArrowInvalid("CSV parse error: Row #N ..."), which _fail turns into a DataError
            if count_only or quiet:
                return "skip" if self.on_invalid_line is not None else "error"
            if self.on_invalid_line is None:
                return "error"
            self.on_invalid_line(path, row.number, row.text)
            return "skip"

        read = pacsv.ReadOptions(
            column_names=o.column_names,
            autogenerate_column_names=not o.header and not o.column_names,
            skip_rows=1 if o.header and o.column_names else 0,
            use_threads=False,
            block_size=1 << 22,
        )
        parse = pacsv.ParseOptions(delimiter=o.delimiter, invalid_row_handler=invalid)
        conv_kw: dict = {"column_types": o.column_types, "strings_can_be_null": True}
        if o.null_values is not None:
            conv_kw["null_values"] = o.null_values
        stream = self.fs.open_input_stream(path, compression="detect")
        if count_only:
            first = o.column_names[0] if o.column_names else None
            if first is not None:
                conv_kw["include_columns"] = [first]
                conv_kw["column_types"] = {first: pa.string()}
        return pacsv.open_csv(stream, read, parse, pacsv.ConvertOptions(**conv_kw))

    def schema(self, i: int) -> pa.Schema:
        """Arrow schema of file ``i`` (CSV: types as inferred from its first block)."""
        if i not in self.schemas:
            try:
                self.schemas[i] = self._open_csv(i, quiet=True).schema
            except (pa.ArrowException, OSError) as err:
                self._fail(self.files[i], err)
        return self.schemas[i]

    def _present(self, i: int) -> list[str]:
        names = set(self.schema(i).names)
        return [c for c in self.columns if c in names]

    def read(self, unit: Unit, start: int = 0) -> Iterator[pa.Table]:
        """Rows ``start..`` of ``unit`` as tables of the requested columns, in file order."""
        cols = self._present(unit.file)
        for t in self._read(unit, start):
            yield t.select(cols)

    def _read(self, unit: Unit, start: int) -> Iterator[pa.Table]:
        path = self.files[unit.file]
        cols = self._present(unit.file)
        try:
            if self.fmt == "parquet":
                # ParquetFile.read_row_group is ~25% faster than scanning the dataset
                # fragment (measured on the synthetic CTR files); the fragment's parsed
                # footer is reused, so the file is not parsed again
                frag = self._fragments[unit.file][unit.part]
                with self.fs.open_input_file(path) as f:
                    pf = pq.ParquetFile(f, metadata=frag.metadata)
                    table = pf.read_row_group(frag.row_groups[0].id, columns=cols)
                yield table.slice(start)
            elif self.fmt == "orc":
                f = paorc.ORCFile(self.fs.open_input_file(path))
                seen = 0
                for s in range(f.nstripes):
                    rb = f.read_stripe(s, columns=cols)
                    if seen + rb.num_rows > start:
                        yield pa.Table.from_batches([rb.slice(max(0, start - seen))])
                    seen += rb.num_rows
            else:
                seen = 0
                for rb in self._open_csv(unit.file):
                    if seen + rb.num_rows > start:
                        t = pa.Table.from_batches([rb.slice(max(0, start - seen))])
                        yield t
                    seen += rb.num_rows
        except (pa.ArrowException, OSError) as err:
            self._fail(path, err)
