"""``manifest.json``: what a version is, and the size and sha256 of each of its files."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from recis.config_base import validate
from recis.errors import CheckpointError, ConfigError
from recis.features import Schema
from recis.train.checkpoint import file_entry, fsync_dir, write_file

MANIFEST = "manifest.json"
FORMAT_NAME = "recis-export"
FORMAT_VERSION = 1


def read_manifest(version_dir: Path, check_files: bool = True) -> dict[str, Any]:
    """The manifest of ``version_dir``, its files checked against their sizes and sha256."""
    path = version_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable export manifest: {err}") from None
    if manifest.get("format") != FORMAT_NAME or manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a recis export manifest (version {FORMAT_VERSION})")
    if check_files:
        for name, want in manifest["files"].items():
            f = version_dir / name
            if not f.is_file() or file_entry(f) != want:
                raise CheckpointError(f"{f}: missing or differs from {MANIFEST} (sha256/size)")
    return manifest


TOKENIZERS = "tokenizers"


def _text_files(schema: dict[str, Any]) -> list[tuple[dict[str, Any], str, str]]:
    """``(entry, key, field)`` of every file path a schema's features read: a text feature's
    tokenizer files (a ``vocab`` tokenizer's ``tokenizer.json``, an ``hf`` tokenizer's
    directory) and a lexical dense feature's statistics."""
    refs = []
    for feature in schema.get("text", []):
        tok = feature.get("tokenizer") or {}
        if tok.get("path"):  # (the n-gram tokenizer hashes: no files)
            refs.append((tok, "path", f"data.schema.text.{feature['name']}.tokenizer.path"))
    for feature in schema.get("dense", []):
        if feature.get("lexical"):
            refs.append(
                (feature["lexical"], "stats", f"data.schema.dense.{feature['name']}.lexical.stats")
            )
    return refs


def bundle_tokenizers(schema: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Copy the files of every tokenizer and lexical feature that has any
    (:func:`_text_files`) into ``folder/tokenizers/<i>/``; ``schema`` (a config dict) with
    those paths made relative to the version, so a version is served without the run
    directory."""
    out = copy.deepcopy(schema)
    copied: dict[str, str] = {}
    for entry, key, field in _text_files(out):
        src = entry[key]
        if src not in copied:
            dst = folder / TOKENIZERS / str(len(copied))
            copied[src] = _copy_tokenizer(Path(src), dst, field)
        entry[key] = copied[src]
    return out


def _copy_tokenizer(src: Path, dst: Path, field: str) -> str:
    """Copy ``src`` (a file or a directory of files) under ``dst``; its path in the version."""
    if not src.exists():
        raise ConfigError(f"{field}: {src} does not exist (bundled in exports)")
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    base = src.parent if src.is_file() else src
    for f in files:
        target = dst / f.relative_to(base)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_file(target, f.read_bytes())
    for d in {dst, *(p.parent for p in dst.rglob("*"))}:
        fsync_dir(d)
    rel = dst.relative_to(dst.parent.parent)
    return str(rel / src.name) if src.is_file() else str(rel)


def manifest_schema(version_dir: Path, manifest: dict[str, Any]) -> Schema:
    """The version's input schema, its bundled files' paths resolved in ``version_dir``."""
    schema = copy.deepcopy(manifest["schema"])
    for entry, key, _ in _text_files(schema):
        if entry[key].startswith(TOKENIZERS + "/"):
            entry[key] = str(version_dir / entry[key])
    return validate(Schema, schema, prefix="schema")


def version_files(folder: Path) -> dict[str, dict[str, Any]]:
    """The manifest's ``files``: every file under ``folder`` by its relative path."""
    return {
        str(p.relative_to(folder)): file_entry(p) for p in sorted(folder.rglob("*")) if p.is_file()
    }
