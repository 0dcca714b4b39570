"""Paths -> files: a file, a directory, a glob or a list, local, by URI or on a filesystem."""

from __future__ import annotations

import glob as globlib
import os

import pyarrow as pa
import pyarrow.fs as pafs

from recis.errors import DataError

SUFFIXES = {
    "parquet": (".parquet", ".pq"),
    "orc": (".orc",),
    "csv": (".csv", ".csv.gz", ".txt"),
    "tsv": (".tsv", ".tsv.gz", ".txt"),
}


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
