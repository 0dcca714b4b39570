"""CSV/TSV parsing options: delimiter, header, column names and types, nulls, quoting; the
Criteo and Hive text layouts. One set of rules for every CSV reader in :mod:`recis.io`
(:class:`~recis.io.sources.Source`, ``recis vocab build``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

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

    def parse_options(self, **kw: object) -> pacsv.ParseOptions:
        """Resolved options' delimiter and quoting (one rule for every CSV reader)."""
        return pacsv.ParseOptions(
            delimiter=self.delimiter, quote_char='"' if self.quoting else False, **kw
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
            encoding=self.encoding,
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
