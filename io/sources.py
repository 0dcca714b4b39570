"""File formats on pyarrow: files -> readable units with known row counts.

A *unit* is the smallest piece a reader schedules: one parquet row group
(pyarrow.dataset fragments split by row group), one ORC file (pyarrow.orc,
read stripe by stripe), one CSV/TSV file (pyarrow.csv, streamed) or one JSON Lines
file (pyarrow.json in line-aligned blocks, :mod:`recis.io.jsonl`). Every unit
knows its row count before any data is read (parquet and ORC footers; CSV and JSON
Lines files are counted once with a streaming parse), which is what lets readers
split rows exactly across ranks and workers and seek on resume. Paths are
resolved by :mod:`recis.io.paths`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.orc as paorc
import pyarrow.parquet as pq

from recis.errors import DataError

from . import arrow_handlers, jsonl, libsvm, nested, partitions
from .csv_options import CRITEO_COLUMNS, CsvOptions, first_failing  # noqa: F401 - re-exported
from .paths import SUFFIXES, as_arrow_fs, resolve_paths  # noqa: F401 - re-exported

# (rows, bad lines) per CSV file identity; the scan of each JSON Lines file
_CSV_ROWS: dict[tuple, tuple[int, list[tuple[int, int, str]]]] = {}
_JSONL_SCANS: dict[tuple, jsonl.Scan] = {}
_LIBSVM_SCANS: dict[tuple, libsvm.Scan] = {}


@dataclass(frozen=True)
class Unit:
    """``num_rows`` rows of file ``file`` (index into the file list), part ``part``.

    ``skip``: the rows of the part before the unit's first, ``part_rows`` the part's rows,
    when a row window cut the part (:func:`window_units`)."""

    file: int
    part: int
    num_rows: int
    row0: int = 0  # row of the unit's first row within its file (CSV: among readable lines)
    skip: int = 0
    part_rows: int = 0  # the whole part's rows when cut (0: num_rows)


def window_units(units: list[Unit], lo: float, hi: float) -> list[Unit]:
    """The units holding rows ``[floor(lo n), floor(hi n))`` of ``units``' ``n`` rows in
    file order, the parts at the two ends cut (a held-out tail: ``lo=0.9, hi=1``)."""
    n = sum(u.num_rows for u in units)
    a, b = int(np.floor(lo * n + 1e-9)), int(np.floor(hi * n + 1e-9))
    out, start = [], 0
    for u in units:
        first, last = max(a, start), min(b, start + u.num_rows)
        if first < last:
            cut = first - start
            rows = u.part_rows or u.num_rows
            out.append(Unit(u.file, u.part, last - first, u.row0 + cut, u.skip + cut, rows))
        start += u.num_rows
    return out


def one_line(text: str, limit: int = 300) -> str:
    """The first line of an error text, unprintable characters escaped (e.g. non-UTF-8)."""
    first = text.splitlines()[0] if text else ""
    out = "".join(c if c.isprintable() and c != "\ufffd" else ascii(c)[1:-1] for c in first)
    return out if len(out) <= limit else out[:limit] + "..."


def _skipping(skipped: np.ndarray, k: np.ndarray) -> np.ndarray:
    """The ``k``-th numbers (same base as ``skipped``) that are not in the sorted array
    ``skipped``: ``k`` plus how many skipped numbers come at or before it."""
    return k + np.searchsorted(skipped - np.arange(len(skipped)), k, side="right")


class Source:
    """One format over a list of files: units, per-file schemas and streamed reads.

    Row numbers (``file_rows``, every error) are 0-based data rows within the file;
    a CSV header is not a row, a CSV line with the wrong number of fields is one.

    Args:
        files: resolved paths (see :func:`resolve_paths`).
        columns: the columns to read (``Schema.columns``).
        fmt: ``parquet``, ``orc``, ``csv``, ``tsv`` or ``jsonl``.
        filesystem: pyarrow filesystem (None: local).
        csv: parsing options for CSV/TSV.
        skip_bad_lines: CSV lines with the wrong field count (JSON Lines: lines that are
            not a JSON object) are recorded in
            ``bad_lines`` (file -> [(row, line, text)]) and left out of the rows;
            otherwise they are a DataError naming the file, row and line.
        text_columns: CSV columns read as strings whatever their content (integer ids
            under ``dtype: int``, parsed and checked per row by recis).
    """

    def __init__(
        self,
        files: list[str],
        columns: list[str],
        fmt: str,
        filesystem: pafs.FileSystem | None = None,
        csv: CsvOptions | None = None,
        skip_bad_lines: bool = False,
        text_columns: list[str] | tuple[str, ...] = (),
        missing_as_null: bool = False,
    ) -> None:
        if fmt not in SUFFIXES:
            raise DataError(f"unknown format {fmt!r}; expected one of {sorted(SUFFIXES)}")
        self.files = files
        self.columns = columns
        self.fmt = fmt
        self.fs = filesystem or pafs.LocalFileSystem()
        self.csv = (csv or CsvOptions()).resolved(fmt)
        self.skip_bad_lines = skip_bad_lines
        self.text_columns = list(text_columns)
        # a requested column a file lacks is all null there (a column added after the file
        # was written); ``absent[i]``: those of file ``i``, known once its schema is read
        self.missing_as_null = missing_as_null
        self.absent: dict[int, list[str]] = {}
        self.bad_lines: dict[int, list[tuple[int, int, str]]] = {}
        self._bad_sorted: dict[int, np.ndarray] = {}
        self._blank_lines: dict[int, np.ndarray] = {}
        self._fragments: dict[int, list[ds.Fragment]] = {}
        self._columns: dict[int, tuple[list[str], list[str], list[str]]] = {}
        self._partitions = [partitions.values(f) for f in files]
        self._partition_types = partitions.types(self._partitions)
        self.schemas: dict[int, pa.Schema] = {}
        self.units = self._list_units()

    # -- row numbers -----------------------------------------------------------------------
    @property
    def _header_lines(self) -> int:
        return 1 if self.fmt in ("csv", "tsv") and self.csv.header else 0

    def row_of_line(self, line: int) -> int:
        """CSV: the 0-based data row of physical line ``line`` (1-based, header counted)."""
        return line - 1 - self._header_lines

    def line_of(self, row: int, file: int | None = None) -> int | None:
        """CSV and JSON Lines: the physical line (1-based, header counted) of data row
        ``row``; else None.

        With ``file`` (its index) blank lines are counted too; without it they are not.
        """
        if self.fmt not in ("csv", "tsv", "jsonl", "libsvm"):
            return None
        line = int(row) + 1 + self._header_lines
        return line if file is None else self.physical_line(file, line)

    def physical_line(self, i: int, line: int) -> int:
        """The physical line of Arrow's line number ``line`` in file ``i``.

        Arrow skips empty lines and numbers lines (its ``Row #N``) without them; the file
        is scanned once, on the first error, for its empty lines (``\\n`` or ``\\r\\n`` alone).
        """
        s = self._blank_lines.get(i)
        if s is None:
            s = self._blank_lines[i] = self._scan_blank_lines(i)
        return int(_skipping(s, np.asarray(line)))  # the line-th non-blank line

    def _scan_blank_lines(self, i: int) -> np.ndarray:
        """Sorted 1-based numbers of the empty lines of file ``i`` (decompressed)."""
        blanks: list[np.ndarray] = []
        offset, last_nl, last_byte, line0 = 0, -1, 10, 1
        with self.fs.open_input_stream(self.files[i], compression="detect") as f:
            while block := f.read(1 << 22):
                a = np.frombuffer(block, np.uint8)
                nl = np.flatnonzero(a == 10)
                if len(nl):
                    pos = offset + nl
                    length = pos - np.r_[last_nl, pos[:-1]] - 1
                    before = np.where(nl > 0, a[np.maximum(nl - 1, 0)], last_byte)
                    blank = (length == 0) | ((length == 1) & (before == 13))
                    blanks.append(line0 + np.flatnonzero(blank))
                    line0 += len(nl)
                    last_nl = int(pos[-1])
                offset += len(a)
                last_byte = int(a[-1])
        return np.concatenate(blanks) if blanks else np.zeros(0, np.int64)

    def file_rows(self, i: int, k: np.ndarray) -> np.ndarray:
        """Data rows of the ``k``-th readable rows of file ``i`` (CSV bad lines skipped)."""
        s = self._bad_sorted.get(i)
        if s is None or not len(s):
            return k
        return _skipping(s, k)  # the k-th row that is not a bad line

    # -- discovery -------------------------------------------------------------------------
    def _fail(
        self, path: str, err: Exception, what: str = "corrupt or truncated file", i: int = -1
    ) -> NoReturn:
        if isinstance(err, DataError):
            raise err
        if isinstance(err, FileNotFoundError | PermissionError):
            what = "unreadable path"
        msg = one_line(str(err)) or type(err).__name__
        line = re.search(r"CSV parse error: Row #(\d+): (.*)", msg)
        if line:  # a CSV line with the wrong number of fields
            n = int(line.group(1))
            raise DataError(
                f"bad line: {line.group(2)}",
                path=path,
                row=self.row_of_line(n),
                line=self.physical_line(i, n) if i >= 0 else n,
            ) from None
        conv = re.search(r"In CSV column #(\d+): (?:Row #(\d+): )?(CSV conversion error.*)", msg)
        if conv and i >= 0:  # a value that does not parse as the column's type
            column, row = self._locate_bad_value(i, int(conv.group(1)))
            if conv.group(2) is not None:  # Arrow named the line: trust it over the search
                row = self.row_of_line(int(conv.group(2)))
            line_no = self.line_of(row, i) if row is not None else None
            text = conv.group(3)
            if "invalid UTF8" in text and self.csv.encoding.replace("-", "").lower() == "utf8":
                text += " (the file is not UTF-8: name its encoding in data.csv.encoding, e.g. gbk)"
            raise DataError(text, path=path, column=column, row=row, line=line_no)
        raise DataError(f"{what}: {msg}", path=path) from None

    def _locate_bad_value(self, i: int, k: int) -> tuple[str | None, int | None]:
        """Name and first bad data row of column #``k`` of CSV file ``i`` (None if not found)."""
        names = self._column_names(i)
        if k >= len(names):
            return None, None
        name = names[k]
        target = self.schemas[i].field(name).type if i in self.schemas else None
        target = target or self.csv.column_types.get(name) or pa.int64()
        seen = 0
        try:
            for rb in self._open_csv(i, binary=name):
                bad = first_failing(rb.column(name), target)
                if bad is not None:
                    return name, int(self.file_rows(i, np.array([seen + bad]))[0])
                seen += rb.num_rows
        except (pa.ArrowException, OSError):
            pass
        return name, None

    def _column_names(self, i: int) -> list[str]:
        """CSV file ``i``'s column names, without converting any value."""
        o = self.csv
        if o.column_names:
            return list(o.column_names)
        if i in self.schemas:
            return list(self.schemas[i].names)
        try:
            with self.fs.open_input_stream(self.files[i], compression="detect") as f:
                first = f.read(1 << 20).split(b"\n", 1)[0].rstrip(b"\r")
        except (pa.ArrowException, OSError):
            return []
        fields = o.split_line(first.decode(o.encoding, "replace"))
        return fields if o.header else [f"f{k}" for k in range(len(fields))]

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
        listers = {
            "parquet": self._units_parquet,
            "orc": self._units_orc,
            "jsonl": self._units_jsonl,
            "libsvm": self._units_libsvm,
        }
        lister = listers.get(self.fmt, self._units_csv)  # csv and tsv
        for i, path in enumerate(self.files):
            self._check_nonempty(i)
            try:
                units.extend(lister(i))
            except (pa.ArrowException, OSError, DataError) as err:
                self._fail(path, err, i=i)
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

    def _file_key(self, i: int, options: object) -> tuple:
        """File ``i``'s identity (filesystem, path, size, mtime) with the read ``options``:
        the key of a per-process cache of what a counting pass found."""
        info = self.fs.get_file_info(self.files[i])
        fs = type(self.fs).__name__
        return (fs, info.path, info.size, info.mtime_ns, options, self.skip_bad_lines)

    def _units_csv(self, i: int) -> list[Unit]:
        # one streaming parse of the first column counts the rows (CSV has no footer) and
        # records the bad lines; the result is cached by file identity, so forked DataLoader
        # workers and later epochs of readers in this process do not parse the file again
        key = self._file_key(i, repr(self.csv))
        cached = _CSV_ROWS.get(key)
        if cached is None:
            self.bad_lines[i] = []
            n = sum(b.num_rows for b in self._open_csv(i, count_only=True))
            # Arrow's line numbers skip blank lines: the physical ones for messages
            self.bad_lines[i] = [(r, self.physical_line(i, k), t) for r, k, t in self.bad_lines[i]]
            cached = (n, list(self.bad_lines[i]))
            _CSV_ROWS[key] = cached
        self.bad_lines[i] = list(cached[1])
        return self._counted_unit(i, cached[0])

    def _counted_unit(self, i: int, n: int) -> list[Unit]:
        """The one unit of text file ``i`` (CSV, JSON Lines) with ``n`` readable rows, its
        bad lines (``self.bad_lines[i]``) indexed; no readable row is a DataError."""
        self._bad_sorted[i] = np.array(sorted(r for r, _, _ in self.bad_lines[i]), np.int64)
        if n == 0 and self.bad_lines[i]:
            row, line, _ = self.bad_lines[i][0]
            raise DataError(
                f"no readable row: all {len(self.bad_lines[i])} rows are bad lines (the first:"
                f" row {row}, line {line})",
                path=self.files[i],
            )
        if n == 0:
            raise DataError("empty file (no rows)", path=self.files[i])
        return [Unit(i, 0, n)]

    def _units_jsonl(self, i: int) -> list[Unit]:
        # one pass counts the rows and fixes the columns' types over every block; cached by
        # file identity as for CSV
        key = self._file_key(i, tuple(self.columns))
        found = _JSONL_SCANS.get(key)
        if found is None:
            found = jsonl.scan(self.fs, self.files[i], self.columns, self.skip_bad_lines)
            _JSONL_SCANS[key] = found
        self.schemas[i] = found.schema
        self.bad_lines[i] = list(found.bad_lines)
        self._blank_lines[i] = found.blank_lines
        return self._counted_unit(i, found.rows)

    def _units_libsvm(self, i: int) -> list[Unit]:
        # one pass counts and checks the lines (cached by file identity as for CSV); the
        # columns are the layout's (label, qid, features, the f<k> asked for)
        key = self._file_key(i, "libsvm")
        found = _LIBSVM_SCANS.get(key)
        if found is None:
            found = _LIBSVM_SCANS[key] = libsvm.scan(self.fs, self.files[i], self.skip_bad_lines)
        self.schemas[i] = libsvm.schema(self.columns or None, found.max_index)
        self.bad_lines[i] = list(found.bad_lines)
        self._blank_lines[i] = found.blank_lines
        return self._counted_unit(i, found.rows)

    # -- reading ---------------------------------------------------------------------------
    def _open_csv(
        self, i: int, count_only: bool = False, binary: str | None = None
    ) -> pacsv.CSVStreamingReader:
        o, path = self.csv, self.files[i]

        def invalid(row: pacsv.InvalidRow) -> str:
            # a raise inside this callback is swallowed by Arrow: "error" makes it raise
            # ArrowInvalid("CSV parse error: Row #N ..."), which _fail turns into a DataError
            if not self.skip_bad_lines:
                return "error"
            if count_only and row.number is not None:
                self.bad_lines[i].append((self.row_of_line(row.number), row.number, row.text))
            return "skip"

        read = o.read_options(use_threads=False, block_size=1 << 22)
        # a Python handler only where lines are skipped: Arrow's own "error" is the same
        # ("CSV parse error: Row #N ..."), and a handler is released by whichever Arrow
        # thread drops the reader last, which takes the GIL: if that is while Python exits,
        # CPython ends the thread inside a C++ destructor and the process aborts (SIGABRT,
        # "terminate called without an active exception"; tests/faults/test_exit_abort.py)
        handler = invalid if self.skip_bad_lines else None
        parse = o.parse_options(invalid_row_handler=handler)
        types = {c: pa.string() for c in self.text_columns}
        types.update(o.column_types)
        if binary is not None:
            types[binary] = pa.binary()
        conv_kw: dict = {"column_types": types, "strings_can_be_null": True}
        stream = o.open(self.fs.open_input_stream(path, compression="detect"))
        if count_only:
            first = o.column_names[0] if o.column_names else None
            if first is not None:
                conv_kw["include_columns"] = [first]
                conv_kw["column_types"] = {first: pa.binary()}  # counts, never converts
        if handler is None:
            return pacsv.open_csv(stream, read, parse, o.convert_options(**conv_kw))
        try:  # Arrow keeps the handler: released before Python exits (see arrow_handlers)
            reader = pacsv.open_csv(stream, read, parse, o.convert_options(**conv_kw))
        except BaseException:
            arrow_handlers.track(None, handler)
            raise
        return arrow_handlers.track(reader, handler)

    def schema(self, i: int) -> pa.Schema:
        """Arrow schema of file ``i`` (CSV: types as inferred from its first block), with a
        field for every dotted path inside its struct columns (:mod:`recis.io.nested`) and
        for each ``key=value`` folder above it (:mod:`recis.io.partitions`)."""
        if i not in self.schemas:
            try:
                self.schemas[i] = self._open_csv(i).schema
            except (pa.ArrowException, OSError) as err:
                self._fail(self.files[i], err, i=i)
        flat = nested.flat_schema(self.schemas[i])
        names = set(flat.names)
        for key in self._partitions[i]:
            if key not in names:  # a column of the file wins over its folder's
                flat = flat.append(pa.field(key, self._partition_types[key]))
        if self.missing_as_null:
            have = set(flat.names)
            self.absent[i] = [c for c in self.columns if c not in have]
            for c in self.absent[i]:
                flat = flat.append(pa.field(c, pa.null()))
        return flat

    def _present(self, i: int) -> list[str]:
        return self._columns_of(i)[0]

    def _columns_of(self, i: int) -> tuple[list[str], list[str], list[str]]:
        """File ``i``'s requested columns that it has, what to ask its reader for to get
        them (:func:`recis.io.nested.read_columns`) and which of them come from its folders
        (partition values) or are absent (all null); worked out once per file."""
        found = self._columns.get(i)
        if found is None:
            names = set(self.schema(i).names)
            present = [c for c in self.columns if c in names]
            held = nested.paths(self.schemas[i])
            folder = [c for c in present if c not in held]
            read = nested.read_columns(self.schemas[i], present)
            found = self._columns[i] = (present, read, folder)
        return found

    def read(self, unit: Unit, start: int = 0) -> Iterator[pa.Table]:
        """Rows ``start..`` of ``unit`` as tables of the requested columns, in file order.

        Parquet page checksums are verified where the writer stored them, and the rows
        read are checked against the footer's (or the CSV count's) row count.
        """
        cols, _, folder = self._columns_of(unit.file)
        held = [c for c in cols if c not in folder]
        values = self._partitions[unit.file]
        # a unit cut from the head of its part stops at its last row; any other reads to
        # the end of the part, where the row count is checked (a file grown or shrunk)
        cut = unit.part_rows and unit.skip + unit.num_rows < unit.part_rows
        left = unit.num_rows - start
        for t in self._pieces_of(unit, start):
            if cut:
                t = t.slice(0, left)
                left -= t.num_rows
            t = nested.select(t, held)
            for key in folder:  # the partition value of the file's folders, every row
                if key in values:
                    column = partitions.constant(values[key], self._partition_types[key], len(t))
                else:  # a column the file lacks (missing_as_null)
                    column = pa.nulls(len(t))
                t = t.append_column(key, column)
            yield t.select(cols) if folder else t
            if cut and left <= 0:
                return

    def _pieces_of(self, unit: Unit, start: int) -> Iterator[pa.Table]:
        """Rows ``start..`` of ``unit``: of its whole part, from the unit's first on."""
        if not unit.part_rows:
            return self._read(unit, start)
        whole = Unit(unit.file, unit.part, unit.part_rows, unit.row0 - unit.skip)
        return self._read(whole, unit.skip + start)

    def _short(self, path: str, got: int, want: int, what: str) -> None:
        if got != want:
            raise DataError(
                f"short read: {got} rows where {what} says {want} (corrupt, or changed while"
                " being read)",
                path=path,
            )

    def _read(self, unit: Unit, start: int) -> Iterator[pa.Table]:
        path = self.files[unit.file]
        # nested fields by their dotted paths: parquet and ORC then read only those leaves
        cols = self._columns_of(unit.file)[1]
        try:
            if self.fmt == "parquet":
                # ParquetFile.read_row_group is ~25% faster than scanning the dataset
                # fragment (measured on the synthetic CTR files); the fragment's parsed
                # footer is reused, so the file is not parsed again
                frag = self._fragments[unit.file][unit.part]
                with self.fs.open_input_file(path) as f:
                    pf = pq.ParquetFile(f, metadata=frag.metadata, page_checksum_verification=True)
                    table = pf.read_row_group(frag.row_groups[0].id, columns=cols)
                self._short(path, table.num_rows, unit.num_rows, f"row group {unit.part}'s footer")
                yield table.slice(start)
            elif self.fmt == "orc":
                f = paorc.ORCFile(self.fs.open_input_file(path))
                seen = 0
                for s in range(f.nstripes):
                    rb = f.read_stripe(s, columns=cols)
                    if seen + rb.num_rows > start:
                        yield pa.Table.from_batches([rb.slice(max(0, start - seen))])
                    seen += rb.num_rows
                self._short(path, seen, unit.num_rows, "the footer")
            elif self.fmt == "libsvm":
                seen = 0
                names = self.schemas[unit.file].names
                for t in libsvm.read_blocks(self.fs, path, names, self.skip_bad_lines):
                    if seen + t.num_rows > start:
                        yield t.slice(max(0, start - seen))
                    seen += t.num_rows
                self._short(path, seen, unit.num_rows, "the count made when the reader was built")
            elif self.fmt == "jsonl":
                seen = 0
                schema = self.schemas[unit.file]
                for t in jsonl.read_blocks(self.fs, path, schema, self.skip_bad_lines):
                    if seen + t.num_rows > start:
                        yield t.slice(max(0, start - seen))
                    seen += t.num_rows
                self._short(path, seen, unit.num_rows, "the count made when the reader was built")
            else:
                seen = 0
                for rb in self._open_csv(unit.file):
                    if seen + rb.num_rows > start:
                        yield pa.Table.from_batches([rb.slice(max(0, start - seen))])
                    seen += rb.num_rows
                self._short(path, seen, unit.num_rows, "the count made when the reader was built")
        except (pa.ArrowException, OSError) as err:
            self._fail(path, err, i=unit.file)
