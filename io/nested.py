"""Fields inside struct columns, named by dotted paths (``user.age``, ``ctx.geo.city``).

Logs exported from BigQuery, Spark or Kafka, and JSON objects with objects inside, store
features in struct columns. Any schema field (``column:`` / ``name``) may name a field
inside one by its path, with a dot between the levels: the reader reads only that leaf
(parquet and ORC read the one nested column; JSON Lines parses only it) and hands it on as
a column of that name, so validation, errors and conversion see an ordinary column. A null
struct makes its fields null (the feature's fill / missing-id rule then applies).

A top-level column whose own name contains a dot wins over a nested path of the same text.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

Path = tuple[str, ...]


def _walk(prefix: str, path: Path, t: pa.DataType, out: dict[str, tuple[Path, pa.DataType]]):
    for f in t:
        name, sub = f"{prefix}.{f.name}", (*path, f.name)
        out.setdefault(name, (sub, f.type))
        if pa.types.is_struct(f.type):
            _walk(name, sub, f.type, out)


def paths(schema: pa.Schema) -> dict[str, tuple[Path, pa.DataType]]:
    """Every column name a schema answers to -> (path of field names, type): its top-level
    fields, then the dotted paths inside its struct fields (top-level names first, so they
    win)."""
    out: dict[str, tuple[Path, pa.DataType]] = {f.name: ((f.name,), f.type) for f in schema}
    for f in schema:
        if pa.types.is_struct(f.type):
            _walk(f.name, (f.name,), f.type, out)
    return out


def flat_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with a field for every dotted path inside its struct columns."""
    if not any(pa.types.is_struct(f.type) for f in schema):
        return schema
    return pa.schema([pa.field(name, t) for name, (_, t) in paths(schema).items()])


def read_columns(schema: pa.Schema, columns: list[str]) -> list[str]:
    """What to ask parquet / ORC for to get ``columns`` (those ``schema`` has): top-level
    names as they are, a nested field by its dotted path (only that leaf is read)."""
    found = paths(schema)
    out: list[str] = []
    for c in columns:
        if c in found:
            path = found[c][0]
            want = path[0] if len(path) == 1 else ".".join(path)
            if want not in out:
                out.append(want)
    return out


def select(table: pa.Table, columns: list[str]) -> pa.Table:
    """A table of ``columns`` (names or dotted paths ``table`` answers to), nested fields
    taken out of their structs (a null struct gives null fields)."""
    if all(c in table.column_names for c in columns):
        return table.select(columns)
    found = paths(table.schema)
    arrays = []
    for c in columns:
        path = found[c][0]
        col = table.column(path[0])
        arrays.append(col if len(path) == 1 else pc.struct_field(col, list(path[1:])))
    return pa.table(arrays, names=columns)


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
