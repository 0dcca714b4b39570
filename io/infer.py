"""A ``data.schema`` read off the files: which column is a label, a dense value, an id
feature or nothing, with the settings the shipped recipes use, and why.

``recis init`` (:mod:`recis.recipe`) writes a run config from it; a user reviews the result
(every choice carries its reason as a comment) instead of writing a schema by hand for a
log of fifty columns. The rules (first match wins), per column of a sample of the rows:

* skipped: the labels' own columns, columns named in ``ignore``, timestamps and dates (and
  integer columns named like ``timestamp`` / ``ts`` / ``date`` / ``hour`` with more than
  ``CATEGORICAL_MAX`` values, such as Avazu's ``hour`` 14102100: use them to split, ``recis
  split --by time``; with fewer, an hour of the day is a category), binary, columns with
  one value or no value, and keys (a string or integer column with a different value on
  nearly every row: a request or row id).
* **id features** (``SparseFeature``, one embedding table each, hashed strings or 64-bit
  integer ids): string columns, integer columns named like ids (``user_id``, ``movieId``)
  or with at most ``CATEGORICAL_MAX`` distinct values (``hour``, ``gender``), whole-number
  float columns of that kind (pandas' integers with a missing value), lists of integers or
  strings (multi-hot; a list column whose ids are mostly a scalar id column's shares
  that column's table, as a behaviour sequence shares the item table), strings of joined
  ids (``Action|Comedy``: ``separator``), text (its words, or in Chinese and Japanese its
  characters and character pairs, as a bag of hashed terms: ``tokenizer``; a text whose
  terms are mostly another's reads that one's table), and maps (keys as ids, values as
  weights).
* **dense features**: other numbers and single-value lists of numbers (the RecIS layout);
  flags (booleans, floats that are 0 or 1) as they are; heavy-tailed non-negative ones
  (counts, prices: the 99th percentile over 20 times the median) bucketed by their
  quantiles (``transform: quantile``, 16 buckets from the sample), the others standardised
  with the sample's mean and deviation; nulls filled with the median. Fixed-length lists
  of floats (pretrained vectors) are one ``dim`` feature.

Tables start at a power of two above twice the ids seen in the sample and grow
(``growable``); a long-tailed id column (over half its ids seen once, more than 1,000 ids)
gets ``admission_min_count: 2``: ids seen once in training get no row.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recis.errors import ConfigError, DataError
from recis.features import NgramTokenizer

from . import nested
from .colnames import (
    ENTITY_NAME,
    ID_NAME,
    PART_NAMES,
    TIME_NAME,
    UNITS,
    is_key,
    text_dates,
    time_encoding,
)
from .quantiles import quantile_boundaries
from .tokenizers import has_cjk, term_ids
from .validate import is_list, is_number, is_string, leaf_type, text_numbers, time_part

GROUP = "qid"  # the query group of a ranking set (LIBSVM, LETOR): metrics per query
CATEGORICAL_MAX = 64  # an integer column with at most this many values is categorical
KEY_SHARE = 0.9  # distinct values per row above which a column is a key, not a feature
SKEW = 20.0  # p99 / median above which a non-negative column is bucketed by quantiles
QUANTILE_BUCKETS = 16
DIM = 16  # embedding width (the DLRM / DeepFM recipes' bottom MLP ends at it)
SEPARATORS = ("|", ";", ",", "\x02")
KEYED_FIELDS = 8  # fields of a JSON object from which its keys may be data (a dict feature)
TEXT_MAX_LEN = 128  # terms of a text feature kept at most (its 99th percentile when fewer)
SHARE = 0.5  # Jaccard index of a list feature's and a scalar feature's ids to share a table


@dataclass
class Choice:
    """What one column becomes: ``section`` ``labels`` / ``dense`` / ``sparse`` / ``skip``,
    its schema entry, the table entry of an id feature, and why."""

    column: str
    section: str
    why: str
    spec: dict[str, Any] = field(default_factory=dict)
    table: dict[str, Any] | None = None
    ids: pa.Array | None = field(default=None, repr=False)  # an id feature's distinct ids
    multi: bool = False  # ids from a list column (a sequence or a set)
    missing: float = 0.0  # a label's share of sampled rows without a value (null or NaN)
    clock: str | None = None  # a time column's unit: "time" (timestamp, date), "s", "ms", "us"


def _feature_name(column: str, taken: set[str]) -> str:
    name = re.sub(r"\W", "_", column).strip("_") or "f"  # letters of any script kept
    name = name if not name[0].isdigit() else f"f_{name}"
    out, k = name, 2
    while out in taken:
        out, k = f"{name}_{k}", k + 1
    taken.add(out)
    return out


def _spec(name: str, column: str, **extra: Any) -> dict[str, Any]:
    """A schema entry: its name, the column when that differs, then ``extra``."""
    return {"name": name, **({"column": column} if column != name else {}), **extra}


def _round(x: float) -> float:
    return float(f"{x:.6g}")


def _numbers(col: pa.ChunkedArray) -> np.ndarray:
    """float64 values without nulls / NaN (bools and decimals cast)."""
    arr = pc.drop_null(col.combine_chunks())
    v = arr.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False)
    return v[np.isfinite(v)]


def _distinct(col: pa.ChunkedArray | pa.Array) -> int:
    """Distinct non-null values (of the items, for a list column)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    while is_list(arr.type):
        arr = pc.list_flatten(arr)
    return int(pc.count_distinct(arr, mode="only_valid").as_py())


def _capacity(distinct: int) -> dict[str, Any]:
    """A growable table's sizes for ``distinct`` ids seen in the sample."""
    capacity = 1 << max(4, math.ceil(math.log2(max(2 * distinct, 2))))
    return {"capacity": capacity, "growable": True, "max_capacity": max(capacity, 1 << 24)}


def _table(name: str, counts: pa.StructArray) -> dict[str, Any]:
    """A table for the ids of a sample (``counts``: their ``pc.value_counts``)."""
    distinct = len(counts)
    table: dict[str, Any] = {"name": name, "dim": DIM, **_capacity(distinct)}
    once = int(np.sum(counts.field("counts").to_numpy() == 1)) if distinct else 0
    if distinct > 1000 and once > distinct / 2:
        table["admission_min_count"] = 2
    return table


def _dense(name: str, column: str, v: np.ndarray) -> Choice:
    median = _round(float(np.median(v)))
    spec = _spec(name, column, fill=median)
    if np.isin(v, (0.0, 1.0)).all():  # a flag: buckets of two values would only rename it
        return Choice(column, "dense", "0/1 values (a flag): as they are", spec)
    p99 = float(np.quantile(v, 0.99))
    if v.min() >= 0 and p99 > SKEW * max(float(np.median(v)), 1e-12):
        spec.update(transform="quantile", boundaries=quantile_boundaries(v, QUANTILE_BUCKETS))
        why = f"heavy-tailed (median {median:g}, 99th percentile {p99:.4g}): quantile buckets"
    else:
        spec.update(transform="standardize", mean=_round(v.mean()), std=_round(v.std()))
        why = "number: standardised"
    return Choice(column, "dense", why, spec)


def _sparse(
    name: str, column: str, values: pa.Array, why: str, multi: bool = False, **extra: Any
) -> Choice:
    counts = pc.value_counts(pc.drop_null(values))
    table = _table(name, counts)
    if multi or "separator" in extra:  # a row's several ids: their mean, as the recipes
        table["pooling"] = "mean"
    spec = _spec(name, column, **extra)
    return Choice(column, "sparse", why, spec, table, counts.field("values"), multi)


def _separator(texts: pa.Array) -> str | None:
    """The character that joins ids in most of these strings (``Action|Comedy``)."""
    for sep in SEPARATORS:
        has = pc.match_substring(texts, sep)
        if pc.mean(has.cast(pa.float64())).as_py() >= 0.2:
            pieces = pc.list_flatten(pc.split_pattern(texts, sep))
            if pc.mean(pc.utf8_length(pieces)).as_py() <= 30:
                return sep
    return None


def _text_words(texts: pa.Array, distinct: int) -> int | None:
    """The word n-gram order to read a string column as text with (None: not text).

    Text has over ``CATEGORICAL_MAX`` values and either spaces in most values and 20
    characters on average (words: their unigrams) or, in a script written without spaces
    (Chinese, Japanese), characters in most values and 4 on average: there a character
    is a word, so 1-2-grams take in the two-character words."""
    if distinct <= CATEGORICAL_MAX:
        return None
    length = pc.mean(pc.utf8_length(texts)).as_py()
    spaced = pc.mean(pc.match_substring(texts, " ").cast(pa.float64())).as_py()
    if length >= 20 and spaced >= 0.5:
        return 1
    sample = texts.slice(0, 2000).to_pylist()
    if length >= 4 and sum(map(has_cjk, sample)) >= 0.5 * len(sample):
        return 2
    return None


def _string_column(name: str, column: str, col: pa.ChunkedArray, rows: int) -> Choice:
    texts = pc.drop_null(col.combine_chunks())
    if pa.types.is_dictionary(texts.type):
        texts = texts.dictionary_decode()
    texts = texts.cast(pa.string())
    if not len(texts):
        return Choice(column, "skip", "no value in the sample")
    distinct = _distinct(texts)
    if distinct == 1:
        return Choice(column, "skip", "one value in the sample")
    numbers, wrong = text_numbers(texts)  # a Hive STRING column of prices, JSON's "vote": "2"
    if not wrong.any() and numbers.null_count < len(numbers):
        choice = _number_column(name, column, pa.chunked_array([numbers]), rows)
        if choice.section == "dense":  # (ids written as digits stay hashed strings, below)
            choice.why = f"numbers as text: {choice.why}"
            return choice
    sep = _separator(texts)
    if sep is not None:
        pieces = pc.list_flatten(pc.split_pattern(texts, sep))
        why = f"ids joined by {sep!r}: multi-hot"
        return _sparse(name, column, pieces, why, separator=sep)
    words = _text_words(texts, distinct)
    if words is not None:
        spec = NgramTokenizer(words=words)
        terms = term_ids(texts, spec)
        p99 = int(np.quantile(pc.list_value_length(terms).to_numpy(zero_copy_only=False), 0.99))
        max_len = max(16, min(TEXT_MAX_LEN, p99))
        what = "words" if words == 1 else "characters and character pairs"
        why = f"text: its {what} as a bag of hashed ids (first {max_len})"
        tok = {"kind": "ngram", "words": words}
        choice = _sparse(name, column, terms.flatten(), why, multi=True, tokenizer=tok)
        choice.spec["max_len"] = max_len
        return choice
    if rows >= 1000 and distinct > KEY_SHARE * len(texts):
        return Choice(column, "skip", f"{distinct} values in {len(texts)} rows: a key")
    return _sparse(name, column, texts, f"strings ({distinct} values): hashed ids")


def _number_column(name: str, column: str, col: pa.ChunkedArray, rows: int) -> Choice:
    t = col.type
    v = _numbers(col)
    if not len(v):
        return Choice(column, "skip", "no value in the sample")
    # integers counted as they are: uint64 ids above 2^53 would collapse as floats
    exact = pc.drop_null(col.combine_chunks()) if pa.types.is_integer(t) else None
    distinct = _distinct(exact) if exact is not None else len(np.unique(v))
    if distinct == 1:
        return Choice(column, "skip", "one value in the sample")
    whole = pa.types.is_integer(t) or (
        pa.types.is_floating(t) and bool(np.all(v == np.floor(v))) and np.abs(v).max() < 2**53
    )
    if whole and rows >= 1000 and distinct > KEY_SHARE * len(v) and is_key(column, v):
        return Choice(column, "skip", f"{distinct} values in {len(v)} rows: a key")
    ids = None  # NaN and nulls left out; uint64 as the int64 of the same bits
    if exact is not None:
        ints = exact.to_numpy(zero_copy_only=False)
        ids = pa.array(ints.view(np.int64) if ints.dtype == np.uint64 else ints.astype(np.int64))
    elif whole:
        ids = pa.array(v.astype(np.int64))
    if ids is not None and (ID_NAME.search(column) or ENTITY_NAME.search(column)):
        return _sparse(name, column, ids, "named as ids")
    if ids is not None and distinct <= CATEGORICAL_MAX and not pa.types.is_boolean(t):
        return _sparse(name, column, ids, f"{distinct} whole values: categorical ids")
    return _dense(name, column, v)


def _time_parts(table: pa.Table, choices: list[Choice], taken: set[str]) -> list[Choice]:
    """The hour of the day and the day of the week of the first time column (a timestamp,
    or epoch seconds / milliseconds / microseconds by name) as categorical ids, those the
    log does not hold already and that vary in the sample."""
    times = [c for c in choices if c.clock]
    if not times:
        return []
    t = times[0]
    col = nested.select(table, [t.column]).column(0)
    have = {c.lower() for c in table.column_names}
    out = []
    for part, names in PART_NAMES.items():
        if have & names:
            continue
        unit = t.clock if t.clock and t.clock != "time" else "s"
        values = pc.drop_null(time_part(col, part, unit))
        if _distinct(values) < 2:  # (a date has no hour)
            continue
        name = _feature_name(f"{t.column}_{part}", taken)
        extra: dict[str, Any] = {"time": part} | ({"time_unit": unit} if unit != "s" else {})
        why = f"the {'hour of the day' if part == 'hour' else 'day of the week'} of {t.column}"
        choice = _sparse(name, t.column, values, f"{why}: categorical ids", **extra)
        choice.ids = None  # (hours are no items: no list shares their table)
        choice.column = f"{t.column}:{part}"  # (the time column itself is skipped)
        out.append(choice)
    return out


def _list_column(name: str, column: str, col: pa.ChunkedArray, rows: int) -> Choice:
    arr = col.combine_chunks()
    lengths = pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(arr)
    leaf = leaf_type(col.type)
    if not len(flat):
        return Choice(column, "skip", "no value in the sample")
    if np.all(lengths[pc.is_valid(arr).to_numpy(zero_copy_only=False)] == 1):
        scalar = pa.chunked_array([flat])  # the RecIS layout: one value per list
        if is_string(leaf):
            return _string_column(name, column, scalar, rows)
        return _number_column(name, column, scalar, rows)
    if pa.types.is_floating(leaf) and len(set(lengths[lengths > 0].tolist())) == 1:
        dim = int(lengths.max())
        spec = _spec(name, column, dim=dim, on_empty="fill")
        return Choice(column, "dense", f"vectors of {dim} floats", spec)
    if not (is_string(leaf) or pa.types.is_integer(leaf)):
        return Choice(column, "skip", f"lists of {leaf}: not ids")
    p99 = int(np.quantile(lengths, 0.99))
    extra: dict[str, Any] = {}
    if p99 > 20:
        extra.update(max_len=min(100, p99), truncate="last")
    why = f"lists of ids (up to {int(lengths.max())}): multi-hot"
    return _sparse(name, column, flat, why, multi=True, **extra)


def _label(
    name: str,
    column: str,
    col: pa.ChunkedArray,
    positive_at: float | None,
    positive: list[str] | None = None,
) -> Choice:
    spec = _spec(name, column)
    leaf = leaf_type(col.type)
    flat = pc.list_flatten(col.combine_chunks()) if is_list(col.type) else col
    if is_string(leaf):
        return _string_label(column, flat, positive, spec)
    if not is_number(leaf):
        raise ConfigError(
            f"--label {column}: {col.type} values; map them to numbers in the config "
            "(LabelSpec values, docs/data.md#labels)"
        )
    if positive is not None:
        raise ConfigError(f"--positive: --label {column} holds numbers (use --positive-at)")
    v = _numbers(pa.chunked_array([flat]) if is_list(col.type) else col)
    if positive_at is not None:
        spec.update(kind="real", positive_at=positive_at)
        return Choice(column, "labels", f"real values, 1 where >= {positive_at:g}", spec)
    seen = set(np.unique(v).tolist())
    if seen <= {0.0, 1.0}:
        return Choice(column, "labels", "0/1 label", spec)
    shown = ", ".join(f"{x:g}" for x in sorted(seen)[:8])
    raise ConfigError(
        f"--label {column}: values {shown}{', ...' if len(seen) > 8 else ''} are not 0/1; "
        "pass --positive-at X to make it 1 where the value is >= X (ratings: 4; -1/+1: 0)"
    )


def _missing(col: pa.ChunkedArray | pa.Array) -> int:
    """Rows of a label column without a value: null, NaN, an empty list (the RecIS layout's
    single-element lists: its element)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if is_list(arr.type):
        lengths = pc.list_value_length(arr).fill_null(0)
        some = pc.greater(lengths, 0)
        empty = len(arr) - int(pc.sum(some).as_py() or 0)
        return empty + _missing(pc.list_element(arr.filter(some), 0))
    nan = pa.types.is_floating(arr.type)
    return int(pc.sum(arr.is_null(nan_is_null=nan)).as_py() or 0)


def _string_label(
    column: str, flat: pa.Array | pa.ChunkedArray, positive: list[str] | None, spec: dict
) -> Choice:
    """A string label (``buy`` / ``pv``, ``yes`` / ``no``) as ``values``: 1 for the
    ``positive`` strings, 0 for the others the sample holds."""
    seen = sorted({v for v in flat.to_pylist() if v is not None})
    shown = ", ".join(seen[:8]) + (", ..." if len(seen) > 8 else "")
    if positive is None:
        raise ConfigError(
            f"--label {column}: strings ({shown}); pass --positive V [V ...] to make it 1 for "
            "those and 0 for the others (or map them in the config: LabelSpec values)"
        )
    ones = [v for v in positive if v in seen]
    if not ones:
        raise ConfigError(
            f"--positive {' '.join(positive)}: no value of --label {column} ({shown})"
        )
    spec["values"] = {v: 1.0 if v in ones else 0.0 for v in seen}
    zeros = len(seen) - len(ones)
    why = f"strings: 1 for {', '.join(ones)}, 0 for the other {zeros} in the sample"
    return Choice(column, "labels", why, spec)


def infer_schema(
    table: pa.Table,
    labels: list[str],
    ignore: list[str] | tuple[str, ...] = (),
    positive_at: float | None = None,
    keyed_objects: bool = False,
    stats_dir: str = ".",
    positive: list[str] | None = None,
) -> list[Choice]:
    """One :class:`Choice` per column of ``table`` (a sample of the training rows; fields of
    struct columns by their dotted paths), labels first. With ``keyed_objects`` (JSON
    Lines) an object whose keys are data (:func:`_is_keyed`) is one weighted id feature
    ``<object>.keys`` / ``.values`` rather than a feature per key. An integer ``qid`` column
    is section ``group``: the query groups of per-query metrics. Raises ConfigError for a
    label the table lacks or whose values are not 0/1 (without ``positive_at``; a string
    label without ``positive``, the strings that are 1), and when
    no column is left to be a feature. A lexical feature's statistics file goes in
    ``stats_dir`` (the run directory)."""
    found = nested.paths(table.schema)
    for lab in labels:
        if lab not in found:
            raise ConfigError(
                f"--label {lab}: no such column (the files have {table.column_names})"
            )
    rows = table.num_rows
    taken: set[str] = set()
    out = []
    for lab in labels:
        col = nested.select(table, [lab]).column(0)
        choice = _label(_feature_name(lab, taken), lab, col, positive_at, positive)
        choice.missing = _missing(col) / max(rows, 1)
        if choice.missing:
            choice.why += f"; {choice.missing:.2%} of the sampled rows have none: skipped"
        out.append(choice)
    keyed: list[str] = []
    for column, (_, t) in found.items():
        inside = [*keyed, *ignore]  # an ignored struct or map: its fields too
        if column in labels or column in ignore or any(column.startswith(k + ".") for k in inside):
            continue
        if keyed_objects and pa.types.is_struct(t) and _is_keyed(table, column, t):
            keyed.append(column)
            name = _feature_name(column, taken)
            keys = pa.array([f.name for f in t])
            why = f"an object of {t.num_fields} keys, few a row: keys as ids, values as weights"
            choice = _sparse(name, f"{column}.keys", keys, why, multi=True)
            choice.spec["weight_column"] = f"{column}.values"
            out.append(choice)
            continue
        parent = found.get(column.rsplit(".", 1)[0], ((), pa.null()))[1]
        if pa.types.is_struct(t) or pa.types.is_map(t):
            continue  # a struct's fields come one by one, a map as <map>.keys below
        if column.endswith(".values") and pa.types.is_map(parent):
            continue  # a map's values weigh its keys
        col = nested.select(table, [column]).column(0)
        if column.endswith(".keys") and pa.types.is_map(parent):
            name = _feature_name(column[:-5], taken)
            weights = column[:-5] + ".values"
            weighted = is_number(leaf_type(found[weights][1]))
            why = "a map: its keys as ids" + (", its values as their weights" if weighted else "")
            keys = pc.list_flatten(col.combine_chunks())
            choice = _sparse(name, column, keys, why, multi=True)
            if weighted:
                choice.spec["weight_column"] = weights
            out.append(choice)
            continue
        out.append(_column(column, t, col, rows, taken))
    out += _time_parts(table, out, taken)
    if not any(c.section in ("dense", "sparse") for c in out):
        raise DataError("no column is left to be a feature", path=None)
    _share_tables(out, stats_dir)
    return out


def _is_keyed(table: pa.Table, column: str, t: pa.StructType) -> bool:
    """Whether a JSON object column holds a dict feature (``{"sports": 0.8}``: the keys are
    the data) rather than fields: at least ``KEYED_FIELDS`` keys seen, all with numbers, and
    on average under half of them in a row."""
    if t.num_fields < KEYED_FIELDS or not all(is_number(f.type) for f in t):
        return False
    col = nested.select(table, [column]).column(0).combine_chunks()
    present = sum(int(pc.sum(col.field(i).is_valid()).as_py() or 0) for i in range(t.num_fields))
    return present < 0.5 * t.num_fields * max(len(col), 1)


def _column(
    column: str, t: pa.DataType, col: pa.ChunkedArray, rows: int, taken: set[str]
) -> Choice:
    leaf = leaf_type(t)
    if column == GROUP and pa.types.is_integer(t) and col.null_count == 0:  # LIBSVM's qid
        return Choice(column, "group", "query groups: per-query gauc and ndcg@10", {})
    if pa.types.is_temporal(leaf):
        why = f"{t}: a time, for splitting (recis split --by time)"
        timed = pa.types.is_timestamp(t) or pa.types.is_date(t)
        return Choice(column, "skip", why, clock="time" if timed else None)
    if TIME_NAME.search(column) and is_number(leaf) and not pa.types.is_boolean(leaf):
        # epoch seconds, YYYYMMDD, or many values (Avazu's hour 14102100); with few values
        # and no calendar, an hour of the day or a day of the week: a category below
        v = _numbers(col) if not is_list(t) else None
        clock = time_encoding(v) if v is not None and len(v) else None
        if (
            clock
            or (pa.types.is_integer(leaf) or not is_list(t))
            and _distinct(col) > CATEGORICAL_MAX
        ):
            shown = f" ({clock})" if clock else ""
            why = f"named as a time{shown}: for splitting (recis split --by time)"
            unit = UNITS.get(clock or "")
            return Choice(column, "skip", why, clock=unit)
    if is_string(t) and len(texts := pc.drop_null(col.combine_chunks())):
        texts = texts.dictionary_decode() if pa.types.is_dictionary(texts.type) else texts
        if text_dates(texts.cast(pa.string())):
            return Choice(
                column,
                "skip",
                f"dates as text ({texts[0].as_py()!r}): for splitting (recis split --by time)",
            )
    if pa.types.is_binary(leaf) or pa.types.is_large_binary(leaf) or pa.types.is_null(leaf):
        return Choice(column, "skip", f"{t}: no value recis reads as a feature")
    name = _feature_name(column, taken)
    if is_list(t):
        choice = _list_column(name, column, col, rows)
    elif is_string(t):
        choice = _string_column(name, column, col, rows)
    elif is_number(t):
        choice = _number_column(name, column, col, rows)
    else:
        choice = Choice(column, "skip", f"{t}: not a type recis reads as a feature")
    if choice.section == "skip":
        taken.discard(name)
    return choice


def _share_tables(choices: list[Choice], stats_dir: str) -> None:
    """A list id feature whose ids are mostly those of a scalar id feature (Jaccard index of
    the two samples' ids at least ``SHARE``; the closest one) reads that feature's table:
    history and candidate items in one space, as in DIN. (Lists sharing another list's
    table were tried on MovieLens: level for DLRM, far lower for DeepFM; docs/data.md.)"""
    scalars = [c for c in choices if c.section == "sparse" and not c.multi and c.ids is not None]
    _share_text_tables(choices, stats_dir)
    for c in choices:
        if not (c.section == "sparse" and c.multi and c.ids is not None and len(c.ids)):
            continue
        if c.table is None:
            continue  # already on another text feature's table
        best, best_j = None, SHARE
        for s in scalars:
            assert s.ids is not None
            if is_string(s.ids.type) != is_string(c.ids.type):
                continue
            inside = pc.sum(pc.is_in(c.ids, value_set=s.ids.cast(c.ids.type))).as_py() or 0
            jaccard = inside / (len(c.ids) + len(s.ids) - inside)
            if jaccard >= best_j:
                best, best_j = s, jaccard
        if best is not None:
            assert best.table is not None
            c.spec["table"], c.table = best.spec["name"], None
            best.table["pooling"] = "mean"  # a row's several ids: their mean, as the list
            c.why += f"; its ids are {best.column}'s (Jaccard {best_j:.2f}): that table"


def _share_text_tables(choices: list[Choice], stats_dir: str) -> None:
    """A text feature whose terms are mostly another's (at least ``SHARE`` of the smaller
    vocabulary in both) reads the earlier one's table: a query and the titles it matches
    in one embedding space, so a model's interactions between the two measure their
    overlap. (Equal terms already get equal ids: one tokenizer salt.) Such a pair also gets
    a lexical dense feature (:func:`_lexical`)."""
    texts = [c for c in choices if c.section == "sparse" and "tokenizer" in c.spec]
    for i, c in enumerate(texts):
        assert c.ids is not None
        for s in texts[:i]:
            if s.table is None or s.ids is None:
                continue  # s itself reads another table: share that one's owner instead
            inside = pc.sum(pc.is_in(c.ids, value_set=s.ids)).as_py() or 0
            share = inside / max(min(len(c.ids), len(s.ids)), 1)
            if share >= SHARE:
                c.spec["table"], c.table = s.spec["name"], None
                s.table.update(_capacity(len(s.ids) + len(c.ids) - inside))
                c.why += f"; {share:.0%} of its terms are {s.column}'s: that table"
                choices.append(_lexical(s, c, stats_dir))
                break


def _lexical(a: Choice, b: Choice, stats_dir: str) -> Choice:
    """The lexical match features of two text columns (:mod:`recis.io.lexical`: TF-IDF
    cosine, BM25, character overlaps, containment, lengths), the one with fewer distinct
    terms as the query; the statistics are fitted on the train files at train start."""
    assert a.ids is not None and b.ids is not None
    query, title = (a, b) if len(a.ids) <= len(b.ids) else (b, a)
    name = f"{query.spec['name']}_{title.spec['name']}_match"
    stats = f"{stats_dir}/{name}.safetensors"
    spec = {"name": name, "lexical": {"query": query.column, "title": title.column, "stats": stats}}
    why = (
        f"lexical match of {query.column} and {title.column}: TF-IDF cosine, BM25, overlaps"
        " (9 columns; statistics fitted on the train files when training starts)"
    )
    return Choice(f"{query.column}+{title.column}", "dense", why, spec)
