"""Paths -> files: a file, a directory, a glob or a list, local, by URI or on a filesystem."""

from __future__ import annotations

import glob as globlib
import os
from typing import Protocol, runtime_checkable

import pyarrow as pa
import pyarrow.fs as pafs

from recis.errors import DataError

# text files compressed as Arrow's input streams decompress them (by these suffixes)
COMPRESSED = (".gz", ".bz2", ".zst", ".lz4")


def _text(*suffixes: str) -> tuple[str, ...]:
    return tuple(s + c for s in suffixes for c in ("", *COMPRESSED))


SUFFIXES = {
    "parquet": (".parquet", ".pq"),
    "orc": (".orc",),
    "csv": (*_text(".csv"), ".txt"),
    "tsv": (*_text(".tsv"), ".txt"),
    "jsonl": _text(".jsonl", ".ndjson", ".json"),
    "libsvm": (*_text(".svm", ".libsvm", ".svmlight"), ".txt"),
}


@runtime_checkable
class GlobbingFileSystem(Protocol):
    """What recis needs of an fsspec filesystem to expand a glob on it (fsspec's
    ``AbstractFileSystem`` has both); a pyarrow filesystem has neither."""

    def glob(self, path: str) -> list[str]: ...

    def isfile(self, path: str) -> bool: ...


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


def _hidden(path: str, below: str = "") -> bool:
    """Whether a component of ``path`` below the folder ``below`` starts with ``.`` or ``_``.

    Spark writes ``_SUCCESS`` and ``_temporary/0/part-*``, Jupyter ``.ipynb_checkpoints/``:
    none of them is data. Components at or above ``below`` (the folder the user named) count
    not, so ``/data/_raw/*.parquet`` still reads.
    """
    rel = path.replace("\\", "/")
    root = below.replace("\\", "/").rstrip("/")
    if root and rel.startswith(root + "/"):
        rel = rel[len(root) + 1 :]
    elif root:  # a glob on an fsspec filesystem can drop the protocol: check the name only
        rel = rel.rsplit("/", 1)[-1]
    return any(part.startswith((".", "_")) for part in rel.split("/") if part)


def _glob_root(pattern: str) -> str:
    """The folder above a glob's first wildcard component (``/a/b/*/x.csv`` -> ``/a/b``)."""
    parts = pattern.replace("\\", "/").split("/")
    for i, part in enumerate(parts):
        if any(ch in part for ch in "*?["):
            return "/".join(parts[:i])
    return os.path.dirname(pattern)


def _is_file(fs: pafs.FileSystem, filesystem: object | None, path: str) -> bool:
    if isinstance(fs, pafs.LocalFileSystem):
        return os.path.isfile(path)
    return filesystem.isfile(path) if isinstance(filesystem, GlobbingFileSystem) else True


# folders of table formats whose data files outlive the commits that removed them: reading
# every file of such a folder would read deleted and overwritten rows
_TABLE_LOGS = {
    "_delta_log": "a Delta Lake table (deltalake: DeltaTable(path).file_uris())",
    ".hoodie": "an Apache Hudi table",
    "metadata": "an Apache Iceberg table (pyiceberg: table.scan().plan_files())",
}


def _refuse_table_format(entries: list, root: str, item: str) -> None:
    """DataError for a folder that is a Delta Lake, Hudi or Iceberg table: its files are not
    its rows (removed files stay until vacuumed); pass the current files instead."""
    top = {
        e.path.replace("\\", "/")[len(root.rstrip("/")) + 1 :]: e
        for e in entries
        if e.path.replace("\\", "/").startswith(root.rstrip("/") + "/")
    }
    for name, what in _TABLE_LOGS.items():
        if top.get(name) is None or top[name].type != pafs.FileType.Directory:
            continue
        if name == "metadata" and not any(
            p.startswith("metadata/") and p.endswith(".metadata.json") for p in top
        ):
            continue
        raise DataError(
            f"the folder is {what}: it keeps data files that later commits removed; pass the"
            " table's current data files (a list or a glob) instead of the folder",
            path=item,
        )


def resolve_paths(
    paths: str | os.PathLike | list,
    suffixes: tuple[str, ...] = SUFFIXES["parquet"],
    filesystem: object | None = None,
) -> list[str]:
    """Expand a file, a directory, a glob, or a list of those into a sorted file list.

    Local paths come back absolute; with ``filesystem`` (pyarrow or fsspec) or
    a URI (``s3://...``) paths are listed on that filesystem. A directory gives its files
    with one of ``suffixes``; one that has none gives its files without a suffix (the
    ``000000_0`` / ``part-00000`` files of Hive and MapReduce tables), read as the format
    asked for. Hidden files
    (``.x``, ``_x``) are ignored: in a directory, any file with such a component below it
    (Spark's ``_temporary/0/part-1.parquet``, ``.ipynb_checkpoints/x.parquet``); from a
    glob, such names and anything that is not a file (``_SUCCESS``, folders). Raises DataError naming the
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
            elif isinstance(filesystem, GlobbingFileSystem):
                matches = sorted(filesystem.glob(path))
            else:
                raise DataError("globs are supported on local and fsspec filesystems", path=item)
            root = _glob_root(path)
            if isinstance(fs, pafs.LocalFileSystem):
                root = os.path.abspath(root or ".")
            matches = [
                m for m in matches if not _hidden(m, below=root) and _is_file(fs, filesystem, m)
            ]
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
            entries = fs.get_file_info(sel)
            _refuse_table_format(entries, path, item)
            files = [
                f
                for f in entries
                if f.type == pafs.FileType.File and not _hidden(f.path, below=path)
            ]
            found = sorted(f.path for f in files if f.base_name.endswith(suffixes))
            if not found:  # Hive / MapReduce output names: 000000_0, part-00000
                found = sorted(f.path for f in files if "." not in f.base_name)
            if not found:
                raise DataError(
                    f"directory has no {'/'.join(suffixes)} file (nor one without a suffix,"
                    " as Hive writes)",
                    path=item,
                )
            out.extend(found)
        elif info.type == pafs.FileType.File:
            out.append(path)
        else:
            raise DataError("unreadable path: no such file or directory", path=item)
    return out
