"""Fields inside struct, map and list-of-struct columns, named by dotted paths (``user.age``,
``ctx.geo.city``, ``tag_scores.keys``, ``order.items.id``).

Logs exported from BigQuery, Spark or Kafka, and JSON objects with objects inside, store
features in struct columns; Hive and Spark tables keep weighted id sets in map columns;
BigQuery's REPEATED RECORDs and JSON arrays of objects are lists of structs. A schema
field's ``column:`` may name a field inside a struct by its path, a dot between the levels,
a map's keys or values as ``<map>.keys`` / ``<map>.values`` and a field of a list of structs
as ``<list>.<field>`` (``list`` columns: ids and their aligned weights). The reader reads
only what it needs (parquet and ORC the one nested column, or the whole map or list; JSON
Lines parses only those fields) and hands it on as a column of that name, so validation,
errors and conversion see an ordinary column. A null struct, map or list makes its fields
null (the feature's fill / missing-id rule then applies).

A top-level column whose own name contains a dot wins over a nested path of the same text.
"""

from __future__ import annotations

import functools

import pyarrow as pa
import pyarrow.compute as pc

Path = tuple[str, ...]


def _is_records(t: pa.DataType) -> bool:
    """A list of structs (BigQuery's REPEATED RECORD, a JSON array of objects)."""
    return pa.types.is_list(t) and pa.types.is_struct(t.value_type)


def _children(t: pa.DataType) -> list[tuple[str, pa.DataType]]:
    """The named parts of a struct (its fields), a map (``keys``, ``values``: lists) or a list
    of structs (each field across the row's records: a list)."""
    if pa.types.is_struct(t):
        return [(f.name, f.type) for f in t]
    if pa.types.is_map(t):
        return [("keys", pa.list_(t.key_type)), ("values", pa.list_(t.item_type))]
    if _is_records(t):
        return [(f.name, pa.list_(f.type)) for f in t.value_type]
    return []


def _walk(prefix: str, path: Path, t: pa.DataType, out: dict[str, tuple[Path, pa.DataType]]):
    for part, typ in _children(t):
        name, sub = f"{prefix}.{part}", (*path, part)
        out.setdefault(name, (sub, typ))
        _walk(name, sub, typ, out)


def paths(schema: pa.Schema) -> dict[str, tuple[Path, pa.DataType]]:
    """Every column name a schema answers to -> (path of parts, type): its top-level fields,
    then the dotted paths inside its struct and map fields (top-level names first, so they
    win)."""
    out: dict[str, tuple[Path, pa.DataType]] = {f.name: ((f.name,), f.type) for f in schema}
    for f in schema:
        _walk(f.name, (f.name,), f.type, out)
    return out


def plain_type(t: pa.DataType) -> pa.DataType:
    """``t`` with Arrow's view strings (``string_view``, ``binary_view``: Polars' in-memory
    strings, kept by files pyarrow writes from them) as plain ``string`` / ``binary``, at any
    depth; every reader and kernel downstream takes those."""
    if pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_binary_view(t):
        return pa.binary()
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(plain_type(f.type)) for f in t])
    if pa.types.is_map(t):
        return pa.map_(plain_type(t.key_type), plain_type(t.item_type))
    if pa.types.is_list(t):
        return pa.list_(t.value_field.with_type(plain_type(t.value_type)))
    if pa.types.is_large_list(t):
        return pa.large_list(t.value_field.with_type(plain_type(t.value_type)))
    return t


def flat_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with a field for every dotted path inside its struct and map columns, view
    types as plain ones (:func:`plain_type`)."""
    schema = pa.schema([f.with_type(plain_type(f.type)) for f in schema])
    if not any(_children(f.type) for f in schema):
        return schema
    return pa.schema([pa.field(name, t) for name, (_, t) in paths(schema).items()])


def read_prefix(schema: pa.Schema, path: Path) -> tuple[Path, pa.DataType]:
    """The part of ``path`` a file reader can select, and its type: the path through structs
    only, up to the whole map or list of structs the rest lies in."""
    t, keep = schema.field(path[0]).type, [path[0]]
    for part in path[1:]:
        if not pa.types.is_struct(t):
            break
        t = t.field(part).type
        keep.append(part)
    return tuple(keep), t


def read_columns(schema: pa.Schema, columns: list[str]) -> list[str]:
    """What to ask parquet / ORC for to get ``columns`` (those ``schema`` has): top-level
    names as they are, a struct's field by its dotted path (only that leaf is read), a map's
    keys or values or a field of a list of structs by the path of that map or list (read
    whole)."""
    found = paths(schema)
    out: list[str] = []
    for c in columns:
        if c not in found:
            continue
        want = ".".join(read_prefix(schema, found[c][0])[0])
        if want not in out:
            out.append(want)
    return out


def _records_part(col: pa.Array, part: str) -> pa.Array:
    """Field ``part`` of each row's records (a list of structs, or a map's key/value
    entries) as ``list<...>``: a null list stays null, a null record gives a null item."""
    if pa.types.is_map(col.type):
        t = col.type
        col = col.cast(pa.list_(pa.struct([t.key_field, t.item_field])))
        part = t.key_field.name if part == "keys" else t.item_field.name
    child = pc.struct_field(col.flatten(), [part])
    offsets = col.offsets
    offsets = pc.subtract(offsets, offsets[0])  # a slice's offsets start past 0
    return pa.ListArray.from_arrays(offsets, child, mask=col.is_null())


def _part(col: pa.Array | pa.ChunkedArray, part: str) -> pa.Array | pa.ChunkedArray:
    if pa.types.is_struct(col.type):
        return pc.struct_field(col, [part])
    if isinstance(col, pa.ChunkedArray):
        t = dict(_children(col.type))[part]
        return pa.chunked_array([_records_part(c, part) for c in col.chunks], type=t)
    return _records_part(col, part)


def select(table: pa.Table, columns: list[str]) -> pa.Table:
    """A table of ``columns`` (names or dotted paths ``table`` answers to), nested fields
    taken out of their structs and maps (a null struct or map gives nulls)."""
    names = set(table.schema.names)  # (column_names builds a new list on every call)
    if all(c in names for c in columns):
        out = table.select(columns)
    else:
        found = paths(table.schema)
        arrays = []
        for c in columns:
            path = found[c][0]
            col = table.column(path[0])
            for part in path[1:]:
                col = _part(col, part)
            arrays.append(col)
        out = pa.table(arrays, names=columns)
    for k, plain in _view_casts(out.schema):
        out = out.set_column(k, columns[k], out.column(k).cast(plain))
    return out


@functools.lru_cache(maxsize=256)
def _view_casts(schema: pa.Schema) -> tuple[tuple[int, pa.DataType], ...]:
    """(index, plain type) of the columns of ``schema`` holding view types (once per schema)."""
    plain = [(k, plain_type(f.type)) for k, f in enumerate(schema)]
    return tuple((k, t) for k, t in plain if t != schema.field(k).type)


def nest(fields: list[tuple[Path, pa.DataType]]) -> pa.Schema:
    """The schema that holds each ``(path, type)``: ``[(("u", "id"), int64)]`` ->
    ``u: struct<id: int64>`` (a JSON parse schema that reads only those leaves). A path
    inside a field that is itself listed whole is left to that field."""
    tree: dict = {}
    for path, t in sorted(fields, key=lambda f: len(f[0])):
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):  # the whole struct is read already
                break
        else:
            node.setdefault(path[-1], t)

    def build(node: dict) -> list[pa.Field]:
        return [
            pa.field(k, pa.struct(build(v)) if isinstance(v, dict) else v) for k, v in node.items()
        ]

    return pa.schema(build(tree))
