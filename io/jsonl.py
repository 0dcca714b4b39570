"""JSON Lines files (one JSON object per line, ``.jsonl`` / ``.ndjson``, gzip detected) on
``pyarrow.json``, in line-aligned blocks.

pyarrow's own streaming JSON reader infers each column's type from its first block and fails
when a later block differs (``Column(/x) changed from number to string``), and it numbers
rows within a block. So a file is read here in blocks of whole lines that recis cuts itself:

1. :func:`scan` (once per file, when a reader is built; cached by the caller) parses every
   block, counts the rows, and unifies the requested columns' types over all blocks (an
   integer column with a float in a later block is a double column; a column that is a
   string in one row and a number in another is a :class:`DataError` naming the column and
   rows). An integer too big for int64 (a uint64 id) is read as uint64, not a double that
   would merge neighbouring ids.
2. :func:`read_blocks` parses the blocks again with that schema fixed (other fields are
   skipped unparsed), so every block has the same columns and types.

A JSON object whose keys vary from row to row (``{"tag_scores": {"sports": 0.8}}``: the keys
are the data) is read as a map when the schema names ``<object>.keys`` / ``<object>.values``:
its keys are strings, its values one type over the file (numbers unify to double), entries
with a null value are left out. pyarrow's JSON reader has no map type, so such objects are
taken from the lines with Python's json (the scan records their value type).

Row numbers are 0-based data rows (blank lines are not rows; a malformed line is one) and
lines are 1-based physical lines, in every error. A malformed line (not a JSON object) is a
DataError naming the file, row and line, or, with ``skip_bad=True``, left out and listed in
the scan's ``bad_lines`` like CSV lines with the wrong field count.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.json as pajson

from recis.errors import DataError

from . import nested

BLOCK_BYTES = 1 << 22  # bytes per parsed block (whole lines; a longer line is its own block)
PIECE_BYTES = 1 << 20  # pieces of a block pyarrow's threads parse in parallel (read pass)
_EXACT = 2.0**53  # doubles hold every integer below this; above it a JSON id may have merged

_ROW = re.compile(r"in row (\d+)")
_COLUMN = re.compile(r"Column\(/([^)]*)\) changed from (\w+) to (\w+)")


@dataclass
class Block:
    """Whole lines of a file: their bytes, the 1-based number of the first line and the
    0-based data row of the first non-blank line."""

    data: bytes
    line0: int
    row0: int
    skipped: tuple[int, ...] = ()  # lines blanked out as malformed: still rows

    def all_lines(self) -> list[tuple[int, bytes]]:
        """``(physical line, text)`` of every line, in order."""
        raw = self.data.split(b"\n")
        if raw and raw[-1] == b"":
            raw.pop()
        return [(self.line0 + k, t) for k, t in enumerate(raw)]

    def lines(self) -> list[tuple[int, bytes]]:
        """``(physical line, text)`` of the non-blank lines (the rows), in order."""
        return [(n, t) for n, t in self.all_lines() if t.strip()]

    @cached_property
    def layout(self) -> tuple[int, list[int]]:
        """(number of lines, 1-based numbers of the blank ones), worked out once."""
        every = self.all_lines()
        return len(every), [n for n, t in every if not t.strip()]


@dataclass
class Scan:
    """What one pass over a file found: rows, the requested columns' unified schema (those
    the file has), the lines left out (``(row, line, text)``) and the blank lines."""

    rows: int
    schema: pa.Schema
    bad_lines: list[tuple[int, int, str]] = field(default_factory=list)
    blank_lines: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def blocks(fs: pafs.FileSystem, path: str, size: int | None = None) -> Iterator[Block]:
    """The file as blocks of about ``size`` (default ``BLOCK_BYTES``) bytes of whole lines
    (decompressed)."""
    size = size or BLOCK_BYTES
    line, row, rest = 1, 0, b""
    with fs.open_input_stream(path, compression="detect") as f:
        while True:
            chunk = f.read(size)
            data = rest + chunk
            # at the end the rest is the last line (without its line end)
            cut = data.rfind(b"\n") + 1 if chunk else len(data)
            if cut == 0 and chunk:  # no line end yet: read on (a line longer than a block)
                rest = data
                continue
            block, rest = Block(data[:cut], line, row), data[cut:]
            if block.data:
                yield block
                n_lines, blank = block.layout
                row += n_lines - len(blank)
                line += n_lines
            if not chunk:
                return


def _parse(data: bytes, schema: pa.Schema | None, threads: bool = False) -> pa.Table:
    """One block; with ``schema`` only its fields are parsed (others skipped). ``threads``:
    pyarrow parses pieces of ``PIECE_BYTES`` in parallel (its errors then number rows within
    a piece: parse again without threads to place one)."""
    size = PIECE_BYTES if threads else max(len(data) + 1, 1 << 16)
    read = pajson.ReadOptions(use_threads=threads, block_size=size)
    parse = (
        pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
        if schema is not None
        else pajson.ParseOptions()
    )
    return pajson.read_json(pa.BufferReader(data), read_options=read, parse_options=parse)


def _bad_line(text: bytes) -> str | None:
    """Why a line is not a JSON object (None: it is one)."""
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError) as err:
        return f"not valid JSON ({err})"
    return None if isinstance(value, dict) else f"a JSON {type(value).__name__}, not an object"


def _without_bad(block: Block, path: str, skip_bad: bool, bad: list[tuple[int, int, str]]) -> Block:
    """``block`` without its malformed lines (each added to ``bad``); without ``skip_bad`` the
    first one is a DataError."""
    keep, skipped, row = [], [], block.row0
    for line, text in block.all_lines():
        why = _bad_line(text) if text.strip() else None
        if why is None:
            keep.append(text)
            row += bool(text.strip())
            continue
        if not skip_bad:
            hint = (
                " (a JSON array file? recis reads one object per line)"
                if line == 1 and text.lstrip().startswith(b"[")
                else ""
            )
            raise DataError(f"bad JSON line: {why}{hint}", path=path, row=row, line=line)
        bad.append((row, line, text.decode("utf-8", "replace")[:200]))
        keep.append(b"")  # blanked: line numbers stay, the row is left out
        skipped.append(line)
        row += 1
    data = b"\n".join(keep) + b"\n" if any(t.strip() for t in keep) else b""
    return Block(data, block.line0, block.row0, tuple(skipped))


def _locate(block: Block, err: Exception, path: str) -> DataError:
    """A DataError naming the row and line of pyarrow's block-relative ``in row N``."""
    msg = str(err).replace("JSON parse error: ", "").strip()
    lines = block.lines()
    m = _ROW.search(msg)
    k = int(m.group(1)) if m else None
    if k is None or k >= len(lines):
        return DataError(f"cannot read JSON: {msg}", path=path)
    col = _COLUMN.search(msg)
    text = _ROW.sub("", msg).strip().rstrip(".")
    if col:
        text = f"JSON {col.group(3)} where earlier rows have a {col.group(2)}"
    line = lines[k][0]
    row = block.row0 + k + sum(1 for n in block.skipped if n < line)
    column = col.group(1).replace("/", ".") if col else None  # a nested field's dotted path
    return DataError(text, path=path, row=row, line=line, column=column)


def _integer_type(data: bytes, path: nested.Path, typ: pa.DataType) -> pa.DataType:
    """``typ`` (a double or list of doubles pyarrow inferred for the field at ``path``) or the
    integer type its values parse as exactly, when they are integers too big for a double to
    keep apart."""
    for ints in (pa.int64(), pa.uint64()):
        target = pa.list_(ints) if pa.types.is_list(typ) else ints
        try:
            _parse(data, nested.nest([(path, target)]))
        except pa.ArrowInvalid:
            continue
        return target
    return typ


def _needs_exact(col: pa.ChunkedArray) -> bool:
    values = pc.list_flatten(col) if pa.types.is_list(col.type) else col
    values = pc.drop_null(values)
    if not len(values) or not pa.types.is_floating(values.type):
        return False
    big = pc.max(pc.abs(values)).as_py() >= _EXACT
    return bool(big and pc.all(pc.equal(values, pc.floor(values))).as_py())


def _unify(
    path: str, seen: dict[str, tuple[pa.DataType, int]], name: str, typ: pa.DataType, row: int
) -> None:
    """Fold block type ``typ`` of column ``name`` (first row ``row``) into ``seen``."""
    if name not in seen or pa.types.is_null(seen[name][0]):
        seen[name] = (typ, row)
        return
    old, first = seen[name]
    if pa.types.is_null(typ) or old == typ:
        return
    ints = {pa.int64(), pa.uint64()}
    if {old, typ} == ints or {old, typ} == {pa.list_(t) for t in ints}:
        merged = typ if "uint64" in str(typ) else old  # uint64 ids next to small ones
    else:
        try:
            both = [pa.schema([(name, old)]), pa.schema([(name, typ)])]
            merged = pa.unify_schemas(both, promote_options="permissive").field(name).type
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            merged = None
    if merged is None or pa.types.is_string(old) != pa.types.is_string(typ):
        raise DataError(
            f"JSON {typ} in the rows from {row} on, {old} in the rows from {first} on",
            path=path,
            column=name,
        )
    seen[name] = (merged, first)


def _object_parents(columns: list[str]) -> dict[str, str]:
    """``<object>.keys`` / ``<object>.values`` names -> the object's dotted path."""
    return {
        c: c.rsplit(".", 1)[0] for c in columns if c.endswith((".keys", ".values")) and "." in c
    }


def _map_values(path: str, name: str, t: pa.DataType) -> pa.DataType:
    """The value type of a keyed object that pyarrow inferred as the struct ``t`` (one field
    per key seen): its fields' types unified (null when it has none)."""
    if not pa.types.is_struct(t) and not pa.types.is_null(t):
        raise DataError(f"JSON {t}, not an object: no keys to read", path=path, column=name)
    out: dict[str, tuple[pa.DataType, int]] = {}
    for f in t if pa.types.is_struct(t) else []:
        if pa.types.is_struct(f.type) or pa.types.is_list(f.type):
            raise DataError(
                f"JSON object whose value for {f.name!r} is {f.type}: a keyed object's values"
                " must be numbers or strings",
                path=path,
                column=name,
            )
        _unify(path, out, name, f.type, 0)
    return out[name][0] if out else pa.null()


def _keyed(lines: list[bytes], name: str, t: pa.MapType) -> pa.MapArray:
    """The keyed object at dotted path ``name`` of each line as a map (null where the line
    has none; entries with a null value left out)."""
    parts = name.split(".")
    offsets, keys, values, missing = [0], [], [], []
    for text in lines:
        obj = json.loads(text)
        for p in parts:
            obj = obj.get(p) if isinstance(obj, dict) else None
        missing.append(not isinstance(obj, dict))
        for k, v in obj.items() if isinstance(obj, dict) else ():
            if v is not None:
                keys.append(k)
                values.append(v)
        offsets.append(len(keys))
    return pa.MapArray.from_arrays(
        pa.array(offsets, pa.int32()),
        pa.array(keys, pa.string()),
        pa.array(values, t.item_type),
        mask=pa.array(missing),
    )


def _tree(wanted: set[str]) -> dict:
    """The fields to keep of each object: name -> True (all of it) or the tree of its fields
    (a wanted ``a.b`` keeps a top-level ``a.b`` and the field ``b`` of an object ``a``)."""
    tree: dict = {c: True for c in wanted}
    for c in sorted(wanted, key=len):
        *parents, leaf = c.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
            if node is True:
                break
        else:
            if parents:
                node[leaf] = True
    return tree


def _keep(obj: dict, tree: dict) -> dict:
    return {
        k: _keep(v, tree[k]) if isinstance(v, dict) and tree[k] is not True else v
        for k, v in obj.items()
        if k in tree
    }


def _project(block: Block, wanted: set[str] | None) -> bytes:
    """The block's lines with only the ``wanted`` fields, nested ones by their dotted paths
    (Python's json: the slow path for a block whose other fields change type, which pyarrow
    cannot infer)."""
    if wanted is None:
        return block.data
    tree = _tree(wanted)
    out = [json.dumps(_keep(json.loads(text), tree)) for _, text in block.lines()]
    return ("\n".join(out) + "\n").encode()


def _under(name: str, wanted: set[str]) -> bool:
    """Whether the field ``name`` (dotted path) is wanted, inside a wanted one or holds one."""
    return any(w == name or w.startswith(name + ".") or name.startswith(w + ".") for w in wanted)


def _scan_block(
    block: Block,
    path: str,
    wanted: set[str] | None,
    skip_bad: bool,
    bad: list[tuple[int, int, str]],
) -> tuple[pa.Table, bytes, int]:
    """The block parsed with inferred types: (table, the bytes parsed, bad lines left out)."""
    try:
        return _parse(block.data, None), block.data, 0
    except pa.ArrowInvalid as err:
        before = len(bad)
        clean = _without_bad(block, path, skip_bad, bad)
        col = _COLUMN.search(str(err))
        name = col.group(1).replace("/", ".") if col else ""
        if len(bad) == before and col and (wanted is None or _under(name, wanted)):
            raise _locate(block, err, path) from None
    data = _project(clean, wanted) if clean.data else b""
    try:
        return (_parse(data, None) if data else pa.table({})), data, len(bad) - before
    except pa.ArrowInvalid as err:  # a wanted column changes type inside the block
        raise _locate(clean, err, path) from None


def scan(fs: pafs.FileSystem, path: str, columns: list[str] | None, skip_bad: bool = False) -> Scan:
    """Rows (readable ones), unified schema of the requested ``columns`` (None: every field, in
    the order first seen), bad and blank lines of ``path``."""
    wanted = None if columns is None else set(columns)
    objects = _object_parents(columns or [])
    if wanted is not None:  # a projected line keeps such an object whole
        wanted |= set(objects)
    maps: dict[str, tuple[pa.DataType, int]] = {}
    seen: dict[str, tuple[pa.DataType, int]] = {}
    where: dict[str, nested.Path] = {}
    bad: list[tuple[int, int, str]] = []
    blank: list[int] = []
    rows = 0
    for block in blocks(fs, path):
        blank += block.layout[1]
        table, data, n_bad = _scan_block(block, path, wanted, skip_bad, bad)
        found = nested.paths(table.schema)
        for name in table.column_names if columns is None else columns:
            parent = objects.get(name)
            if name not in found and parent in found:
                _unify(path, maps, parent, _map_values(path, parent, found[parent][1]), block.row0)
                continue
            if name not in found:
                continue
            # what is parsed: the field itself, or the whole array of objects it lies in
            prefix, typ = nested.read_prefix(table.schema, found[name][0])
            col = nested.select(table, [name]).column(0)
            if _needs_exact(col):
                if prefix != found[name][0]:
                    raise DataError(
                        "integers above 2**53 inside a JSON array of objects would lose"
                        " digits as doubles: write these ids as strings",
                        path=path,
                        column=name,
                    )
                typ = _integer_type(data, prefix, col.type)
            key = ".".join(prefix)
            where[key] = prefix
            _unify(path, seen, key, typ, block.row0)
        rows += table.num_rows + n_bad
    schema = nested.nest([(where[k], t) for k, (t, _) in seen.items()])
    for name, (values, _) in maps.items():  # keyed objects: top-level map columns
        values = pa.float64() if pa.types.is_null(values) else values
        schema = schema.append(pa.field(name, pa.map_(pa.string(), values)))
    return Scan(rows - len(bad), schema, bad, np.asarray(blank, np.int64))


def read_blocks(
    fs: pafs.FileSystem, path: str, schema: pa.Schema, skip_bad: bool = False
) -> Iterator[pa.Table]:
    """The file's readable rows in order, block by block, with ``schema``'s columns (a scan's
    schema: nested fields inside their structs, see :func:`recis.io.nested.select`; its map
    columns are keyed objects, taken from the lines)."""
    threads = pa.cpu_count() > 1
    keyed = [f for f in schema if pa.types.is_map(f.type)]
    if keyed:
        schema = pa.schema([f for f in schema if not pa.types.is_map(f.type)])
    for block in blocks(fs, path):
        table, data = _read_block(block, path, schema, skip_bad, threads)
        if table is None:
            continue
        if keyed:
            lines = [t for t in data.split(b"\n") if t.strip()]
            if len(lines) != table.num_rows:  # the two parsers must see the same rows
                raise DataError(f"{len(lines)} lines but {table.num_rows} rows parsed", path=path)
            for f in keyed:
                table = table.append_column(f.name, _keyed(lines, f.name, f.type))
        yield table


def _read_block(
    block: Block, path: str, schema: pa.Schema, skip_bad: bool, threads: bool
) -> tuple[pa.Table | None, bytes]:
    """One block parsed with ``schema`` and the bytes parsed (without its malformed lines when
    ``skip_bad``); None when no line is left."""
    try:
        return _parse(block.data, schema, threads), block.data
    except pa.ArrowInvalid:
        pass
    try:  # one piece: pyarrow's row numbers are then the block's
        return _parse(block.data, schema), block.data
    except pa.ArrowInvalid as err:
        clean = _without_bad(block, path, skip_bad, [])
        if clean.data == block.data:
            raise _locate(block, err, path) from None
        if not clean.data:
            return None, b""
        try:
            return _parse(clean.data, schema), clean.data
        except pa.ArrowInvalid as err2:
            raise _locate(clean, err2, path) from None


def read_table(
    path: str, columns: list[str] | None = None, fs: pafs.FileSystem | None = None
) -> pa.Table:
    """A whole JSON Lines file as one table (``columns``: only these, nested fields by their
    dotted paths, as columns of those names; default all, objects as struct columns)."""
    fs = fs or pafs.LocalFileSystem()
    found = scan(fs, path, columns)
    if not found.rows:
        raise DataError("empty file (no rows)", path=path)
    tables = list(read_blocks(fs, path, found.schema))
    table = pa.concat_tables(tables) if tables else found.schema.empty_table()
    if columns is None:
        return table
    return nested.select(table, [c for c in columns if c in nested.paths(table.schema)])
