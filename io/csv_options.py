"""CSV/TSV parsing options: delimiter, header, column names and types, nulls, quoting; the
Criteo and Hive text layouts. One set of rules for every CSV reader in :mod:`recis.io`
(:class:`~recis.io.sources.Source`, ``recis vocab build``)."""

from __future__ import annotations

import codecs
import csv as csvlib
import io
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

if TYPE_CHECKING:
    from recis.config import CsvConfig

# Criteo display-ads layout: label, 13 integer counts, 26 hex categorical values, no header
CRITEO_COLUMNS = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
CRITEO_TYPES = {
    "label": pa.float32(),
    **{f"I{i}": pa.int64() for i in range(1, 14)},
    **{f"C{i}": pa.string() for i in range(1, 27)},
}


# Hive text tables (LazySimpleSerDe): fields, collection items and map keys are separated by
# ^A, ^B and ^C (read lists with ``separator: "\x02"``, maps with ``kv_separator: "\x03"``)
HIVE_DELIMITER = "\x01"

# Arrow splits fields on one ASCII character. Any other delimiter (MovieLens 1M's ``::``,
# ``||``, a full-width ``；``) is rewritten to this one in the byte stream before Arrow
# parses it: the ASCII unit separator, made for this and absent from real text.
SUBSTITUTE = "\x1f"


def arrow_delimiter(delimiter: str) -> bool:
    """Whether Arrow's CSV parser takes ``delimiter`` as it is (one ASCII character)."""
    return len(delimiter) == 1 and delimiter.isascii()


class DelimiterStream(io.RawIOBase):
    """A binary stream of CSV text with each ``delimiter`` replaced by :data:`SUBSTITUTE`,
    as UTF-8.

    ``raw`` is the file's (decompressed) byte stream in ``encoding``. UTF-8 is rewritten as
    bytes (its characters never share bytes with another's); another encoding is decoded
    first, with undecodable bytes kept as they are, so Arrow still reports them at their
    column and row. A delimiter split between two reads is held back until the next. Lines
    and their numbers are unchanged. A :data:`SUBSTITUTE` already in the text stops the
    read (``pyarrow.ArrowInvalid``): it would be read as a delimiter.
    """

    _BLOCK = 1 << 20

    def __init__(self, raw: Any, delimiter: str, encoding: str = "utf8") -> None:
        super().__init__()
        self._raw = raw
        self._utf8 = codecs.lookup(encoding).name == "utf-8"
        self._decoder = codecs.getincrementaldecoder(encoding)("surrogateescape")
        self._delim = delimiter
        # UTF-8 as bytes (no decoding cost), another encoding as text
        self._find: Any = delimiter.encode() if self._utf8 else delimiter
        self._sub: Any = SUBSTITUTE.encode() if self._utf8 else SUBSTITUTE
        self._tail: Any = self._find[:0]  # what may be the start of a delimiter
        self._out = b""
        self._eof = False

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        chunk = self._raw.read(self._BLOCK)
        self._eof = not chunk
        text = chunk if self._utf8 else self._decoder.decode(chunk, final=self._eof)
        data = self._tail + text
        if self._sub in data:
            raise pa.ArrowInvalid(
                f"the text holds the character {SUBSTITUTE!r}, which stands in for the "
                f"delimiter {self._delim!r} while parsing"
            )
        data = data.replace(self._find, self._sub)  # then hold back a delimiter's start
        keep = 0 if self._eof else _partial_suffix(data, self._find)
        body, self._tail = data[: len(data) - keep], data[len(data) - keep :]
        self._out += body if self._utf8 else body.encode("utf-8", "surrogateescape")

    def read(self, size: int = -1) -> bytes:
        while not self._eof and (size is None or size < 0 or len(self._out) < size):
            self._fill()
        if size is None or size < 0:
            size = len(self._out)
        out, self._out = self._out[:size], self._out[size:]
        return out

    def close(self) -> None:
        self._raw.close()
        super().close()


def _partial_suffix(data: Any, delim: Any) -> int:
    """Length of the longest proper prefix of ``delim`` that ``data`` ends with."""
    for k in range(len(delim) - 1, 0, -1):
        if data.endswith(delim[:k]):
            return k
    return 0


@dataclass
class CsvOptions:
    """How to parse CSV/TSV text. ``layout="criteo"`` sets the Criteo TSV columns and types;
    ``layout="hive"`` Hive's text tables (``\\x01`` between fields, no header, no quoting,
    ``\\N`` and empty fields null). ``encoding`` is the files' text encoding (a Python codec
    name: ``gbk``, ``latin-1``, ``cp1252``; Arrow transcodes to UTF-8 while reading);
    ``decimal_point`` the character before a number's fraction (``,`` in European exports)."""

    delimiter: str | None = None
    header: bool = True
    column_names: list[str] | None = None
    column_types: dict[str, pa.DataType] = field(default_factory=dict)
    null_values: list[str] | None = None
    layout: str | None = None
    quoting: bool = True
    encoding: str = "utf8"
    decimal_point: str = "."

    @classmethod
    def from_config(cls, c: CsvConfig) -> CsvOptions:
        """The options a ``data.csv`` section (:class:`recis.config.CsvConfig`) describes."""
        return cls(
            delimiter=c.delimiter,
            header=c.header,
            column_names=c.column_names,
            null_values=c.null_values,
            layout=None if c.layout == "none" else c.layout,
            encoding=c.encoding,
            decimal_point=c.decimal_point,
        )

    def resolved(self, fmt: str) -> CsvOptions:
        out = CsvOptions(**self.__dict__)
        if out.layout == "criteo":
            out.header = False
            out.column_names = out.column_names or list(CRITEO_COLUMNS)
            out.column_types = {**CRITEO_TYPES, **out.column_types}
            out.delimiter = out.delimiter or "\t"
        if out.layout == "hive":  # LazySimpleSerDe: ^A between fields, \N for NULL
            out.header, out.quoting = False, False
            out.delimiter = out.delimiter or HIVE_DELIMITER
            out.null_values = out.null_values if out.null_values is not None else ["\\N", ""]
        out.delimiter = out.delimiter or ("\t" if fmt == "tsv" else ",")
        return out

    @property
    def rewrites(self) -> bool:
        """Whether the text goes through :class:`DelimiterStream` (a delimiter Arrow does not
        take); resolved options only."""
        return self.delimiter is not None and not arrow_delimiter(self.delimiter)

    def open(self, source: Any) -> Any:
        """What Arrow's CSV reader reads: ``source`` (a path or a byte stream) itself, or
        with :meth:`rewrites` a :class:`DelimiterStream` over it (a path opened and
        decompressed by its suffix)."""
        if not self.rewrites:
            return source
        if not hasattr(source, "read"):
            source = pa.input_stream(str(source), compression="detect")
        return DelimiterStream(source, self.delimiter or ",", self.encoding)

    def split_line(self, line: str) -> list[str]:
        """One header line's fields (quotes removed; Python's csv module)."""
        if self.rewrites:
            line, delimiter = line.replace(self.delimiter or ",", SUBSTITUTE), SUBSTITUTE
        else:
            delimiter = self.delimiter or ","
        return next(csvlib.reader([line], delimiter=delimiter))

    def parse_options(self, **kw: object) -> pacsv.ParseOptions:
        """Resolved options' delimiter and quoting (one rule for every CSV reader; a
        delimiter of several characters is :data:`SUBSTITUTE` in the :meth:`open` stream)."""
        delimiter = SUBSTITUTE if self.rewrites else self.delimiter
        return pacsv.ParseOptions(
            delimiter=delimiter, quote_char='"' if self.quoting else False, **kw
        )

    def read_options(self, **kw: object) -> pacsv.ReadOptions:
        """How resolved options name the columns (one rule for every CSV reader).

        ``column_names`` with ``header: true`` replace the header line (skipped); without
        names and without a header Arrow names the columns ``f0``, ``f1``, ...
        """
        return pacsv.ReadOptions(
            column_names=self.column_names,
            autogenerate_column_names=not self.header and not self.column_names,
            skip_rows=1 if self.header and self.column_names else 0,
            encoding="utf8" if self.rewrites else self.encoding,  # open() transcoded it
            **kw,
        )

    def convert_options(self, **kw: object) -> pacsv.ConvertOptions:
        """Resolved options' nulls and decimal point with ``kw`` (columns, types) on top (one
        rule for every CSV reader)."""
        base: dict = {"decimal_point": self.decimal_point}
        if self.null_values is not None:
            base["null_values"] = self.null_values
        return pacsv.ConvertOptions(**(base | kw))


def _casts(arr: pa.Array, target: pa.DataType) -> bool:
    try:
        pc.cast(pc.cast(arr, pa.string()), target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return False
    return True


def csv_options(csv: dict[str, Any] | None) -> CsvOptions | None:
    """A ``--csv`` mapping of ``recis init`` / ``recis split`` validated as a run config's
    ``data.csv`` (errors name ``--csv.<field>``), as :class:`CsvOptions`; None without one.
    (Imports no torch: ``recis split`` answers before it loads.)"""
    if not csv:
        return None
    from recis.config import CsvConfig
    from recis.config_base import validate

    return CsvOptions.from_config(validate(CsvConfig, csv, prefix="--csv"))


def first_failing(arr: pa.Array, target: pa.DataType) -> int | None:
    """Index of the first value of ``arr`` (binary) that does not convert to ``target``."""
    if _casts(arr, target):
        return None
    lo, hi = 0, len(arr)  # the first failure is in [lo, hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _casts(arr.slice(lo, mid - lo), target):
            lo = mid
        else:
            hi = mid
    return lo


# the delimiters `sniff` tries; of those that fit, the one giving the most fields wins, then
# the earlier one here
SNIFFED = ("::", "||", "\t", ",", ";", "|", "\x01")
_NUMBER = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")
_COMMA_DECIMAL = re.compile(r"^\s*[+-]?\d+,\d+\s*$")  # 17,60: a European export's number
_WHOLE = re.compile(r"^\s*[+-]?\d+\s*$")


def _decimal_point(delimiter: str, rows: list[list[str]]) -> str:
    """``,`` when some column holds ``17,60`` numbers on every row (whole numbers aside) and
    ``,`` is not the delimiter; else ``.``."""
    if delimiter == "," or not rows:
        return "."
    for j in range(min(len(r) for r in rows)):
        values = [r[j] for r in rows if r[j].strip()]
        comma = [bool(_COMMA_DECIMAL.match(v)) for v in values]
        if any(comma) and all(c or _WHOLE.match(v) for c, v in zip(comma, values)):
            return ","
    return "."


def sniff(
    path: str, encoding: str = "utf8", delimiter: str | None = None, lines: int = 20
) -> dict[str, Any]:
    """The delimiter and header of a delimited text file, read off its first ``lines``
    lines: ``{"delimiter": d, "header": bool, "first": line, "fields": [...]}`` (the first
    line and its fields; ``{}`` for a file with no complete line).

    Without ``delimiter``, it is the one of :data:`SNIFFED` that splits every line into the
    same number of fields, the most fields (two or more) if several do (a ``||``-joined list
    column then loses to the ``,`` between columns), else ``,``; quotes are respected for
    one-character delimiters. The first line is a header when a column that is a number on
    every later line is not one there; it is data when such a column is a number there too;
    with no numeric column it is taken for a header. ``decimal_point`` is ``,`` when a column
    holds ``17,60`` numbers and ``,`` is not the delimiter."""
    with pa.input_stream(path, compression="detect") as f:
        raw = f.read(1 << 16)
    texts = raw.decode(encoding, "replace").split("\n")
    if len(raw) == 1 << 16:  # the last line may be cut
        texts.pop()
    rows = [line.rstrip("\r") for line in texts[:lines] if line.strip()]
    if not rows:
        return {}
    if delimiter is None:
        delimiter, most = ",", 1
        for cand in SNIFFED:
            o = CsvOptions(delimiter=cand)
            counts = {len(o.split_line(line)) for line in rows}
            if len(counts) == 1 and (n := counts.pop()) > most:
                delimiter, most = cand, n
    o = CsvOptions(delimiter=delimiter)
    first, *rest = [o.split_line(line) for line in rows]
    point = _decimal_point(delimiter, rest)

    def number(text: str) -> bool:
        return bool(_NUMBER.match(text) or point == "," and _COMMA_DECIMAL.match(text))

    numeric = [
        j for j in range(len(first)) if rest and all(j < len(r) and number(r[j]) for r in rest)
    ]
    header = not numeric or not all(number(first[j]) for j in numeric)
    found = {"delimiter": delimiter, "header": header, "first": rows[0], "fields": first}
    return found | {"decimal_point": point}


def sniffed_options(
    path: str, fmt: str, given: dict[str, Any] | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A ``data.csv`` mapping ``given`` with what :func:`sniff` reads off ``path`` where it
    is silent: a CSV delimiter other than ``,``, a decimal comma (``17,60`` with ``;`` between
    fields, as European exports write numbers), and ``header: false`` when the first line is
    data (without ``column_names`` Arrow then names the columns ``f0``, ``f1``, ...; with
    them the first line is no longer dropped as the header they replace); and what
    :func:`sniff` found (``{}`` when nothing was read). Other formats and the Criteo and
    Hive layouts are returned as given."""
    out = dict(given or {})
    if fmt not in ("csv", "tsv") or out.get("layout", "none") != "none":
        return out, {}
    delimiter = out.get("delimiter") or ("\t" if fmt == "tsv" else None)
    found = sniff(path, out.get("encoding", "utf8"), delimiter)
    if not found:
        return out, found
    if delimiter is None and found["delimiter"] != ",":
        out["delimiter"] = found["delimiter"]
    if "header" not in out and not found["header"]:  # column_names would replace a line
        out["header"] = False
    if "decimal_point" not in out and found["decimal_point"] != ".":
        out["decimal_point"] = found["decimal_point"]
    return out, found
