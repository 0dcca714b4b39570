"""The base of every config: strict validation, ``--set`` overrides and YAML loading.

Leaf of the config layer (below :mod:`recis.config`, whose classes it validates, and the
packages' own configs such as :mod:`recis.llm.config`): it knows pydantic and YAML, none of
recis' config classes. :func:`validate` builds a config class from a plain mapping in
pydantic's strict mode and turns every problem into one :class:`~recis.errors.ConfigError`
line naming the dotted field; :func:`apply_overrides` applies ``a.b=value`` overrides to the
raw mapping first, so they are checked the same way.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import json
import os
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError

from recis.config_yaml import ConfigLoader, ConfigTagError, DuplicateKeyError, load_text
from recis.errors import ConfigError

# every config class: unknown fields refused, assignments validated
STRICT = ConfigDict(extra="forbid", strict=False, validate_assignment=True)

T = TypeVar("T")


def _known_fields(cls: type | None, loc: tuple) -> list[str]:
    """Field names valid at ``loc`` (to suggest a fix for a typo)."""
    node: Any = cls
    for part in loc[:-1]:
        if isinstance(part, int) or node is None:
            continue  # list index: the item type was already unwrapped
        try:
            hints = typing.get_type_hints(node)
        except Exception:
            return []
        node = _unwrap(hints.get(part, hints.get(f"{part}_")))
    if node is None or not dataclasses.is_dataclass(node):
        return []
    return [f.name.rstrip("_") for f in dataclasses.fields(node)]


def _unwrap(tp: Any) -> Any:
    """The dataclass inside ``X | None`` / ``list[X]`` annotations, if any."""
    if isinstance(tp, str):
        return None
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        found = _unwrap(arg)
        if found is not None:
            return found
    return None


def format_validation_error(err: ValidationError, prefix: str = "", cls: type | None = None) -> str:
    """One clause per problem, ``dotted.path: message``, joined by ``; ``."""
    lines = []
    for e in err.errors():
        parts = [p for p in e["loc"] if p not in ("function-after", "function-wrap")]
        loc_str = ".".join(str(p).rstrip("_") for p in parts) or "<root>"
        if prefix:
            loc_str = f"{prefix}.{loc_str}" if parts else prefix
        kind = e["type"]
        if kind in ("extra_forbidden", "unexpected_keyword_argument"):
            msg = "unknown field"
            close = difflib.get_close_matches(str(parts[-1]), _known_fields(cls, tuple(parts)), n=1)
            if close:
                msg += f" (did you mean {close[0]!r}?)"
        elif kind in ("missing", "missing_argument"):
            msg = "field required"
        elif "input" in e and kind.endswith(("_type", "_parsing")):
            expected = kind.split("_")[0]
            expected = _EXPECTED.get(expected, expected)
            msg = f"expected {expected}, got {e['input']!r}"
        else:
            # a validator's ValueError: its own message, without pydantic's "Value error, "
            msg = e["msg"].removeprefix("Value error, ") if kind == "value_error" else e["msg"]
            head = loc_str.split(".", 1)[0]
            if kind == "value_error" and msg.split(":", 1)[0].startswith(f"{head}."):
                lines.append(msg)  # the validator named its own field (by name, not index)
                continue
            if "input" in e and not isinstance(e["input"], dict | list):
                msg = f"{msg}, got {e['input']!r}"
        lines.append(f"{loc_str}: {msg}")
    return "; ".join(lines)


# pydantic's type names, as a YAML writer knows them
_EXPECTED = {
    "string": "str",
    "float": "number",
    "dataclass": "mapping",
    "dict": "mapping",
    "model": "mapping",
}


def _plain(value: Any, where: str) -> Any:
    """``value`` as JSON data: what strict validation reads (see :func:`validate`)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, f"{where}.{i}" if where else str(i)) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # an already-built config object inside a mapping: validated again from its fields
        return TypeAdapter(type(value)).dump_python(value, by_alias=True, mode="json")
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, datetime.date):
        return value.isoformat()
    raise ConfigError(f"{where or '<root>'}: unsupported value of type {type(value).__name__}")


def validate(cls: type[T], raw: Any, prefix: str = "") -> T:
    """Build ``cls`` from a plain mapping, raising :class:`ConfigError` on any problem.

    Validation is strict (pydantic's strict mode over the mapping as JSON data, which
    still builds nested config classes from mappings): ``true`` is no int, ``2.5`` no int,
    ``"3"`` no number, ``1`` no bool; an int is a valid float.
    """
    data = json.dumps(_plain(raw, prefix), allow_nan=True)
    try:
        return TypeAdapter(cls).validate_json(data, strict=True)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, prefix, cls)) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value``; the value is parsed as YAML (``3`` -> int, ``[1,2]`` -> list)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, value = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r}: empty field name")
    try:
        parsed = yaml.load(value, Loader=ConfigLoader)  # noqa: S506 (a SafeLoader)
    except (ConfigTagError, DuplicateKeyError) as err:
        raise ConfigError(f"override {text!r}: {err.problem}") from None
    except yaml.YAMLError:  # not YAML at all (``a: b: c``): the text itself
        parsed = value
    return parts, parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides in place; a numeric part indexes a list (``tables.0.dim=8``).

    A key given twice is refused (as a duplicate YAML key is): the last would silently win."""
    given: dict[tuple[str, ...], str] = {}
    for text in overrides:
        parts, value = parse_override(text)
        key_parts = tuple(p.strip() for p in parts)
        if key_parts in given:
            raise ConfigError(
                f"override {text!r}: {'.'.join(key_parts)} is given twice "
                f"(also {given[key_parts]!r})"
            )
        given[key_parts] = text
        node: Any = raw
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            where = ".".join(parts[: i + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override {text!r}: {where}: no list index {part!r}")
                key: Any = int(part)
            elif isinstance(node, dict):
                key = part
                if not last and node.get(key) is None:
                    node[key] = {}
            else:
                raise ConfigError(f"override {text!r}: {'.'.join(parts[:i])} is not a mapping")
            if last:
                node[key] = value
            else:
                node = node[key]
    return raw


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config ({err.strerror})") from None
    raw = load_text(text, str(path))
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    return raw
