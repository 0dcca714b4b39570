"""Input validation: column presence and types per file, bad values per row.

Column problems (missing, wrong type, ids in a float column, one column typed
differently by two files) are found from every file's Arrow schema when a
reader is built (:func:`check_files`) and always raise. Row problems (null,
NaN, inf or out-of-range label, a list where one value is needed holding 0 or
more, null/NaN/inf dense value under the ``raise`` policy, a dense list of the
wrong length, weights not aligned with ids, a string id that is not a 64-bit
integer under ``dtype: int``) are found per chunk with vectorized masks; the
reader raises on the first one or, with ``on_bad_row="skip"``, drops, counts
and quarantines them.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recis.errors import DataError
from recis.features import DenseFeature, LabelSpec, Schema, SparseFeature

from .tokenizers import term_ids

_log = logging.getLogger("recis.io")

_LISTS = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list)
_INT64_MAX = "9223372036854775807"
_INT64_MIN = "9223372036854775808"  # digits of -2**63 without the sign
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def is_list(t: pa.DataType) -> bool:
    return any(f(t) for f in _LISTS)


def is_number(t: pa.DataType) -> bool:
    """A value column's type: integers, floats, booleans and decimals (Hive / Spark
    ``DECIMAL(10, 2)`` prices, read as float; ids in a decimal column are refused apart)."""
    return (
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_boolean(t)
        or pa.types.is_decimal(t)
    )


def is_string(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t)


# a number as text: what Arrow's cast to float64 reads (surrounding spaces trimmed first)
_NUMBER_TEXT = r"^[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|(?i:nan|inf|infinity))$"


def text_numbers(arr: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """Numbers written as text (Hive ``STRING`` columns, JSON's ``"vote": "2"``) as float64,
    a blank text null, and the rows whose text is not a number (``bad``, null there)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    text = pc.utf8_trim_whitespace(arr.cast(pa.string()))
    ok = pc.match_substring_regex(text, _NUMBER_TEXT).fill_null(False)
    blank = pc.equal(text, "").fill_null(True)
    bad = pc.and_(pc.invert(ok), pc.invert(blank)).to_numpy(zero_copy_only=False)
    kept = pc.if_else(ok, text, pa.scalar(None, pa.string()))
    return kept.cast(pa.float64()), bad


def leaf_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if is_list(t) else t


def _is_signed(t: pa.DataType) -> bool:
    return pa.types.is_signed_integer(t)


def check_columns(schema: Schema, arrow: pa.Schema, path: str, hint: str = "") -> None:
    """Raise DataError naming ``path`` and the column if a column is absent (``hint`` then
    follows the message) or mistyped."""

    def get(col: str) -> pa.DataType:
        i = arrow.get_field_index(col)
        if i < 0:
            raise DataError(
                f"missing column (file has {', '.join(arrow.names[:12])}"
                f"{', ...' if len(arrow.names) > 12 else ''}){hint}",
                path=path,
                column=col,
            )
        return arrow.field(i).type

    def bad(col: str, t: pa.DataType, want: str) -> None:
        leaf = leaf_type(t)
        hint = (
            " (bytes that are not UTF-8 text)"
            if pa.types.is_binary(leaf) or pa.types.is_large_binary(leaf)
            else ""
        )
        raise DataError(f"wrong type {t}{hint}: expected {want}", path=path, column=col)

    for lab in schema.labels:
        t = get(lab.source)
        if lab.values is not None:
            if not (is_string(leaf_type(t)) or pa.types.is_null(t)):
                bad(lab.source, t, "a string column (the label's values map strings to numbers)")
        elif not (is_number(leaf_type(t)) or pa.types.is_null(t)):
            hint = " (map the strings with the label's values)" if is_string(leaf_type(t)) else ""
            bad(lab.source, t, f"a number column (or list<number> of one value per row){hint}")
    for f in schema.dense:
        for c in f.sources:
            t = get(c)
            if f.lexical is not None and not (is_string(leaf_type(t)) or pa.types.is_null(t)):
                bad(c, t, f"text for the lexical feature {f.name} (string or list<string>)")
            elif f.lexical is None and not (is_number(leaf_type(t)) or _plain(t)):
                bad(c, t, "a number or list<number> column (or numbers as text)")
    for s in schema.sparse:
        t = get(s.source)
        _check_ids(s, t, bad)
        if s.weight_column:
            w = get(s.weight_column)
            if not is_number(leaf_type(w)) or is_list(w) != is_list(t):
                bad(s.weight_column, w, f"numbers shaped like {s.source} ({t})")
    for x in schema.text:
        t = get(x.source)
        if not (is_string(leaf_type(t)) or pa.types.is_null(t)):
            bad(x.source, t, "a string or list<string> column")
    for col in schema.extras:
        t = get(col)
        if not is_number(leaf_type(t)):
            bad(col, t, "a number column (or list<number> of one value per row)")


def _plain(t: pa.DataType) -> bool:
    """Null or string columns: a dense feature reads them as numbers (:func:`text_numbers`)."""
    return pa.types.is_null(t) or is_string(t)


def _check_ids(f: SparseFeature, t: pa.DataType, bad) -> None:  # noqa: ANN001
    if pa.types.is_map(t):
        bad(
            f.source,
            t,
            f"ids (a map: name its keys as column {f.source}.keys and their weights as"
            f" weight_column {f.source}.values)",
        )
    leaf = leaf_type(t)
    if pa.types.is_null(leaf):
        return
    if f.time is not None:
        if not (pa.types.is_timestamp(t) or pa.types.is_date(t) or is_number(t)):
            bad(f.source, t, f"a timestamp, date or number column (time: {f.time})")
        return
    if pa.types.is_decimal(leaf):
        bad(
            f.source,
            t,
            "integer ids of at most 64 bits (a decimal column can hold more);"
            " store int64/uint64, or strings with dtype: string",
        )
    if f.tokenizer is not None:
        if not is_string(leaf):
            bad(f.source, t, "text for the tokenizer (string or list<string>)")
    elif f.dtype == "string":
        if not (is_string(leaf) or pa.types.is_integer(leaf)):
            bad(f.source, t, "string ids (string or list<string>)")
    elif not (pa.types.is_integer(leaf) or is_string(leaf) or pa.types.is_floating(leaf)):
        bad(f.source, t, "integer or string ids (int64, list<int64>, string, list<string>)")


def check_files(schema: Schema, files: list[str], arrow: list[pa.Schema]) -> None:
    """Check every file's columns, and that the files agree with each other.

    Raises DataError naming the file and column: a missing or mistyped column,
    two files whose types for one column cannot be unified (e.g. ``int64`` and
    ``list<int64>``), or ids of one embedding table that are ``uint64`` in one
    place and a signed integer in another (their 64 bits would alias: uint64
    2**64 - 1 and int64 -1 are the same id).
    """
    # several files: a column may have been added after the older ones were written
    hint = "; if older files predate it, data.on_missing_column: null" if len(files) > 1 else ""
    for path, s in zip(files, arrow):
        check_columns(schema, s, path, hint)
    first: dict[str, tuple[pa.DataType, str]] = {}
    for path, s in zip(files, arrow):
        for col in schema.columns:
            t = s.field(col).type
            if col not in first:
                first[col] = (t, path)
                continue
            t0, p0 = first[col]
            if t != t0 and not _unifies(t0, t):
                raise DataError(f"type {t} does not match {t0} in {p0}", path=path, column=col)
    _check_signedness(schema, files, arrow)


def missing_columns(
    files: list[str], absent: dict[int, list[str]], log: bool = True
) -> dict[str, list[str]]:
    """``column -> the files that lack it`` when a reader reads missing columns as null
    (``absent``: per file index, as :class:`~recis.io.sources.Source` found them), with
    ``log`` one warning per column. A column that every file lacks is a DataError: that is
    a misspelt or wrong column, not one added after older files were written."""
    out: dict[str, list[str]] = {}
    for i, cols in sorted(absent.items()):
        for c in cols:
            out.setdefault(c, []).append(files[i])
    for col, lacking in out.items():
        if len(lacking) == len(files):
            where = "the file" if len(files) == 1 else f"all {len(files)} files"
            raise DataError(
                f"missing column in {where} (on_missing_column: null reads a column that only"
                " some files lack as null)",
                path=lacking[0],
                column=col,
            )
        if log:
            _log.warning(
                "column %r is missing in %d of %d files (the first: %s): read as null there",
                col,
                len(lacking),
                len(files),
                lacking[0],
            )
    return out


def _unifies(a: pa.DataType, b: pa.DataType) -> bool:
    if pa.types.is_null(a) or pa.types.is_null(b):
        return True  # e.g. a CSV column with no value in one file: every row null
    if is_string(leaf_type(a)) != is_string(leaf_type(b)):
        return False  # auto ids: strings are hashed, integers are not: never mix them
    try:
        pa.unify_schemas(
            [pa.schema([("c", a)]), pa.schema([("c", b)])], promote_options="permissive"
        )
    except (pa.ArrowTypeError, pa.ArrowInvalid, NotImplementedError):
        return False
    return True


def _check_signedness(schema: Schema, files: list[str], arrow: list[pa.Schema]) -> None:
    """uint64 ids and signed ids must not meet in one table (see :func:`check_files`)."""
    seen: dict[str, tuple[bool, str, str]] = {}  # table -> (has uint64, path, column)
    for f in schema.sparse:
        if f.dtype == "string":
            continue  # integers are hashed as text there: no aliasing
        for path, s in zip(files, arrow):
            leaf = leaf_type(s.field(f.source).type)
            if not pa.types.is_integer(leaf):
                continue
            if not (pa.types.is_uint64(leaf) or _is_signed(leaf)):
                continue  # uint8..uint32 equal their value as int64 and as uint64
            u = pa.types.is_uint64(leaf)
            prev = seen.setdefault(f.table_name, (u, path, f.source))
            if prev[0] != u:
                was = "uint64" if prev[0] else "signed"
                raise DataError(
                    f"ids are {'uint64' if u else leaf} here but {was} ids in "
                    f"{prev[1]} (column {prev[2]!r}) for table {f.table_name!r}: uint64 ids "
                    "above 2**63 would alias negative ids; store one integer type",
                    path=path,
                    column=f.source,
                )


def _nan_or_null(col: pa.ChunkedArray | pa.Array, inf: bool = False) -> np.ndarray:
    """Rows that are null or NaN (and with ``inf``: +-inf, or a float64 past float32's range,
    which would become inf in the batch)."""
    mask = col.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_floating(col.type):
        nan = pc.is_nan(col) if not inf else pc.invert(pc.is_finite(col))
        if inf and pa.types.is_float64(col.type):
            nan = pc.or_(nan, pc.greater(pc.abs(col), _FLOAT32_MAX))
        mask = mask | pc.fill_null(nan, False).to_numpy(zero_copy_only=False)
    return mask


def list_lengths(col: pa.Array) -> np.ndarray:
    """Per-row lengths of a list array, nulls as 0 (int64 ``[B]``)."""
    return (
        pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    )


def scalar_values(col: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray | None]:
    """float64 ``[B]`` of a number column, or of a list column's single elements.

    Returns ``(values, lengths)``: nulls are NaN; for a list column ``lengths`` is
    ``[B]`` and rows whose length is not 1 are NaN; for a scalar column it is None.
    """
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_null(col.type):
        return np.full(len(col), np.nan), None
    if not is_list(col.type):
        return _to_float64(col), None
    lengths = list_lengths(col)
    flat = _to_float64(col.flatten())
    out = np.full(len(col), np.nan)
    one = lengths == 1
    out[one] = flat[(np.cumsum(lengths) - lengths)[one]]
    return out, lengths


def _to_float64(arr: pa.Array) -> np.ndarray:
    """float64 ``[N]``, nulls as NaN (bools and integers cast; ids this is not for)."""
    if pa.types.is_null(arr.type):
        return np.full(len(arr), np.nan)
    if not pa.types.is_float64(arr.type):
        arr = pc.cast(arr, pa.float64(), safe=False)
    return arr.to_numpy(zero_copy_only=False)


def int_string_ok(values: pa.Array) -> np.ndarray:
    """bool ``[N]``: the (non-null) string is a base-10 integer in int64's range."""
    s = pc.utf8_trim_whitespace(values.cast(pa.string()))
    # no leading '+': Arrow's string-to-int64 cast does not parse it
    form = pc.fill_null(pc.match_substring_regex(s, r"^-?[0-9]+$"), False)
    body = pc.replace_substring_regex(s, r"^-?0*", "")
    neg = pc.fill_null(pc.starts_with(s, "-"), False).to_numpy(zero_copy_only=False)
    n = pc.fill_null(pc.utf8_length(body), 99).to_numpy(zero_copy_only=False)
    # equal-length digit strings compare like their numbers
    le_max = pc.fill_null(pc.less_equal(body, _INT64_MAX), False).to_numpy(zero_copy_only=False)
    le_min = pc.fill_null(pc.less_equal(body, _INT64_MIN), False).to_numpy(zero_copy_only=False)
    fits = (n < 19) | ((n == 19) & np.where(neg, le_min, le_max))
    return form.to_numpy(zero_copy_only=False) & fits


def parse_int_strings(values: pa.Array) -> np.ndarray:
    """int64 ``[N]`` from strings already checked by :func:`int_string_ok`."""
    s = pc.utf8_trim_whitespace(values.cast(pa.string()))
    return pc.cast(s, pa.int64()).to_numpy(zero_copy_only=False)


def _label_problems(lab: LabelSpec, v: np.ndarray) -> list[tuple[np.ndarray, str]]:
    """(mask, what) of label values invalid for the label's kind (finite values only)."""
    ok = np.isfinite(v)
    if lab.kind == "binary":
        out = ok & (v != 0) & (v != 1)
        return [(out, "label out of range for kind binary (expected 0 or 1)")]
    if lab.kind == "soft":
        return [(ok & ((v < 0) | (v > 1)), "label out of range for kind soft (expected [0, 1])")]
    if lab.kind == "graded":
        out = ok & ((v < 0) | (v > lab.max) | (np.floor(v) != v))
        return [(out, f"label out of range for kind graded (expected 0, 1, ..., {lab.max:g})")]
    return []


def id_column(
    table: pa.Table, f: SparseFeature
) -> tuple[pa.Array | pa.ChunkedArray, pa.ListArray | None]:
    """The ids column of ``f`` and the weights its ``id:weight`` pieces carry (None without
    ``kv_separator``), from one split of the text. A string column with ``separator`` is
    split into ``list<string>`` (empty pieces become nulls, i.e. no id; with ``kv_separator``
    the id part of each piece, and ``list<string>`` pieces too). The weights are
    ``list<double>`` aligned with the ids: 1 for a piece without ``kv_separator``, null where
    the weight is not a finite number."""
    col = table.column(f.source)
    if f.time is not None:
        return time_part(col, f.time, f.time_unit), None
    if f.tokenizer is not None and is_string(leaf_type(col.type)):
        return term_ids(col, f.tokenizer), None
    if pa.types.is_floating(leaf_type(col.type)):
        return _nan_as_null(col), None
    if not _splits(col.type, f):
        return col, None
    ids, weights = _split(col, f)
    return ids, weights if f.kv_separator is not None else None


_TIME_PARTS = {"hour": pc.hour, "weekday": pc.day_of_week, "month": pc.month, "day": pc.day}
_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000}


def time_part(col: pa.Array | pa.ChunkedArray, part: str, unit: str = "s") -> pa.Array:
    """``part`` of each time of a timestamp, date or number column (numbers: ``unit`` since
    1970, UTC) as int64; a null (or NaN) time is null."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_date(arr.type):
        arr = arr.cast(pa.timestamp("s"))
    elif not pa.types.is_timestamp(arr.type):  # numbers since 1970, as microseconds
        us = pc.multiply(arr.cast(pa.float64()), 1_000_000 / _PER_SECOND[unit])
        us = pc.if_else(pc.is_finite(us), us, pa.scalar(None, pa.float64()))
        arr = pc.round(us).cast(pa.int64()).cast(pa.timestamp("us"))
    return _TIME_PARTS[part](arr).cast(pa.int64())


def _nan_as_null(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A float id column (or list of them) with NaN as null: pandas writes an integer
    column with missing values as float64 with NaN, which is "no id" here."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    values = arr.flatten() if is_list(arr.type) else arr
    values = pc.if_else(pc.is_nan(values), pa.scalar(None, values.type), values)
    if not is_list(arr.type):
        return values
    offsets = pa.array(np.concatenate(([0], np.cumsum(list_lengths(arr)))).astype(np.int32))
    return pa.ListArray.from_arrays(offsets, values, mask=arr.is_null())


def _float_id_problems(values: pa.Array) -> tuple[np.ndarray, np.ndarray, int]:
    """bool ``[N]`` each: float ids that are not whole numbers, and whole ones past what a
    float of that width holds exactly (where ids have merged when written); and that bound's
    power of 2 (53 for float64, 24 for float32)."""
    v = values.to_numpy(zero_copy_only=False)
    bits = np.finfo(v.dtype).nmant + 1
    with np.errstate(invalid="ignore"):
        big = np.abs(v) > float(2**bits)
        return ~np.isnan(v) & ~big & (v != np.floor(v)), big, bits


def _splits(t: pa.DataType, f: SparseFeature) -> bool:
    """Whether ``f``'s column of type ``t`` is split into pieces: a string column with
    ``separator``, or a ``list<string>`` of ``id:weight`` pieces with ``kv_separator``."""
    if f.separator is None:
        return False
    return is_string(t) or (f.kv_separator is not None and is_list(t) and is_string(leaf_type(t)))


_FLOAT_TEXT = r"^\s*[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?\s*$"


def _split(col: pa.Array | pa.ChunkedArray, f: SparseFeature) -> tuple[pa.ListArray, pa.ListArray]:
    """(ids, weights) of a ``separator`` string column; weights only with ``kv_separator``."""
    text = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if is_list(text.type):  # already pieces: list<string> of "id:weight"
        pieces = text.cast(pa.list_(pa.string()))
    else:
        if pa.types.is_dictionary(text.type):
            text = text.dictionary_decode()
        pieces = pc.split_pattern(text.cast(pa.string()), f.separator)
    values = pieces.flatten()
    offsets = pc.cumulative_sum(pc.fill_null(pc.list_value_length(pieces), 0)).to_numpy()
    offsets = pa.array(np.concatenate(([0], offsets)).astype(np.int32))
    weights = pa.nulls(len(values), pa.float64())
    if f.kv_separator is not None:  # the weight follows the last kv_separator (greedy id)
        sep = re.escape(f.kv_separator)
        kv = pc.extract_regex(values, rf"^(?P<id>.*){sep}(?P<w>.*)$")
        has = kv.is_valid()
        text_w = pc.if_else(has, kv.field("w"), "1")
        values = pc.if_else(has, kv.field("id"), values)
        ok = pc.fill_null(pc.match_substring_regex(text_w, _FLOAT_TEXT), False)
        w = pc.cast(pc.if_else(ok, pc.utf8_trim_whitespace(text_w), None), pa.float64())
        weights = pc.if_else(pc.is_finite(w), w, None)
    values = pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values)
    mask = pieces.is_null()
    return (
        pa.ListArray.from_arrays(offsets, values, mask=mask),
        pa.ListArray.from_arrays(offsets, weights, mask=mask),
    )


# one problem of some rows: ``(mask [N] bool, column, what)``
Flag = tuple[np.ndarray, str, str]


def bad_rows(table: pa.Table, schema: Schema, nan_policy: str) -> tuple[np.ndarray, list[str]]:
    """Rows that cannot become a valid example.

    Returns ``(code, reasons)``: ``code`` is int16 ``[N]``, 0 for a good row,
    else ``k + 1`` where ``reasons[k]`` is ``"column: what"`` of the first
    problem found in that row (labels, then dense, sparse and extra columns).
    """
    n = table.num_rows
    code = np.zeros(n, dtype=np.int16)
    reasons: list[str] = []
    flags = itertools.chain(
        _label_flags(table, schema),
        *(
            _dense_flags(table.column(f.source).combine_chunks(), f, nan_policy)
            for f in schema.dense
            if f.lexical is None  # computed: always finite
        ),
        *(_sparse_flags(table, s) for s in schema.sparse),
        _extra_flags(table, schema),
    )
    for mask, column, what in flags:
        if mask.any():
            key = f"{column}: {what}"
            if key not in reasons:
                reasons.append(key)
            code[(code == 0) & mask] = reasons.index(key) + 1
    return code, reasons


def _one_value(column: str, lengths: np.ndarray | None, what: str) -> Iterator[Flag]:
    """A list column where one value per row is expected: empty and longer lists."""
    if lengths is not None:
        yield lengths == 0, column, f"empty list (one {what} value per row expected)"
        yield lengths > 1, column, f"list of more than one value (one {what} expected)"


def label_values(
    col: pa.Array | pa.ChunkedArray, lab: LabelSpec
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """:func:`scalar_values` of a label column after ``lab.values`` maps its strings to
    numbers: ``(values, lengths, unknown)``, ``unknown [B]`` marking the rows holding a
    string the map lacks (None without a map)."""
    if lab.values is None:
        return (*scalar_values(col), None)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_null(col.type):
        return np.full(len(col), np.nan), None, np.zeros(len(col), dtype=bool)
    flat = col.flatten() if is_list(col.type) else col
    flat = flat.dictionary_decode() if pa.types.is_dictionary(flat.type) else flat
    idx = pc.index_in(flat.cast(pa.string()), value_set=pa.array(list(lab.values), pa.string()))
    mapped = pc.take(pa.array(list(lab.values.values()), pa.float64()), idx)
    miss = (flat.is_valid().to_numpy(zero_copy_only=False)) & ~idx.is_valid().to_numpy(
        zero_copy_only=False
    )
    unknown = miss
    if is_list(col.type):
        n = list_lengths(col)
        offsets = pa.array(np.concatenate(([0], np.cumsum(n))).astype(np.int32))
        mapped = pa.ListArray.from_arrays(offsets, mapped, mask=col.is_null())
        unknown = _rows_with(n, miss)
    return (*scalar_values(mapped), unknown)


def _rows_with(lengths: np.ndarray, values: np.ndarray) -> np.ndarray:
    """bool ``[B]``: the rows of a list column (``lengths [B]``) holding a value marked in
    ``values [sum(lengths)]``."""
    rows = np.zeros(len(lengths), dtype=bool)
    rows[np.repeat(np.arange(len(lengths)), lengths)[values]] = True
    return rows


def _label_flags(table: pa.Table, schema: Schema) -> Iterator[Flag]:
    for lab in schema.labels:
        v, lengths, unknown = label_values(table.column(lab.source), lab)
        if unknown is not None and lab.values is not None:
            keys = ", ".join(list(lab.values)[:8]) + (", ..." if len(lab.values) > 8 else "")
            yield unknown, lab.source, f"label not in values ({keys})"
        yield from _one_value(lab.source, lengths, "label")
        yield np.isnan(v), lab.source, "null or NaN label"
        yield np.isinf(v), lab.source, "inf label"
        yield np.abs(v) > _FLOAT32_MAX, lab.source, "label past float32's range"
        for mask, what in _label_problems(lab, v):
            yield mask, lab.source, what


def _dense_flags(col: pa.Array, f: DenseFeature, nan_policy: str) -> Iterator[Flag]:
    policy = f.on_nan or nan_policy
    if is_string(col.type):
        col, wrong = text_numbers(col)
        yield wrong, f.source, "dense value is not a number"
    if not is_list(col.type):
        if policy == "raise":
            yield _nan_or_null(col, inf=True), f.source, "null, NaN or inf dense value"
        return
    lengths = list_lengths(col)
    if f.on_empty == "raise":
        empty = (lengths == 0) & col.is_valid().to_numpy(zero_copy_only=False)
        yield empty, f.source, f"empty list (expected {f.dim} value{'s' * (f.dim > 1)})"
    yield (lengths != 0) & (lengths != f.dim), f.source, f"list length is not {f.dim}"
    if policy == "raise":
        row_of = np.repeat(np.arange(len(col)), lengths)
        nan_rows = np.zeros(len(col), dtype=bool)
        nan_rows[row_of[_nan_or_null(col.flatten(), inf=True)]] = True
        missing = ~col.is_valid().to_numpy(zero_copy_only=False)
        if f.on_empty == "raise":  # on_empty: fill puts ``fill`` in an empty list
            missing |= lengths == 0
        yield nan_rows | missing, f.source, "null, NaN or inf dense value"


def _sparse_flags(table: pa.Table, s: SparseFeature) -> Iterator[Flag]:
    if s.tokenizer is not None:
        return  # any text is a valid bag of terms (its type is checked per file)
    ids, kv = id_column(table, s)
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    if s.dtype == "int" and is_string(leaf_type(ids.type)):
        flat = ids.flatten() if is_list(ids.type) else ids
        valid = flat.is_valid().to_numpy(zero_copy_only=False)
        wrong = valid & ~int_string_ok(flat)
        if is_list(ids.type):
            wrong = _rows_with(list_lengths(ids), wrong)
        yield wrong, s.source, "id is not a 64-bit integer (dtype: int)"
    if pa.types.is_floating(leaf_type(ids.type)):  # pandas' integers with NaN: whole floats
        fraction, big, bits = _float_id_problems(ids.flatten() if is_list(ids.type) else ids)
        if is_list(ids.type):
            fraction, big = (_rows_with(list_lengths(ids), m) for m in (fraction, big))
        yield fraction, s.source, "id in a float column is not a whole number"
        yield (
            big,
            s.source,
            f"id in a float column past 2**{bits}, where floats merge integers (a CSV of larger"
            " ids: set dtype: string on the feature to hash them as written)",
        )
    if kv is not None:
        bad_w = ~kv.flatten().is_valid().to_numpy(zero_copy_only=False)
        bad_w &= ids.flatten().is_valid().to_numpy(zero_copy_only=False)
        rows = _rows_with(list_lengths(ids), bad_w)
        yield rows, s.source, f"weight is not a finite number (after {s.kv_separator!r})"
    if s.weight_column:
        w = table.column(s.weight_column).combine_chunks()
        if is_list(ids.type):
            misaligned = list_lengths(ids) != list_lengths(w)
            yield misaligned, s.weight_column, f"weights not aligned with {s.source}"
        bad = _nan_or_null(w, inf=True) & ids.is_valid().to_numpy(zero_copy_only=False)
        yield bad, s.weight_column, "null, NaN or inf weight"


def _extra_flags(table: pa.Table, schema: Schema) -> Iterator[Flag]:
    for c in schema.extras:
        col = table.column(c)
        _, lengths = scalar_values(col)
        yield from _one_value(c, lengths, "extra")
        # a null would turn the whole column into float64 NaN (group ids past 2**53 merge)
        yield ~col.is_valid().to_numpy(zero_copy_only=False), c, "null extra value"
