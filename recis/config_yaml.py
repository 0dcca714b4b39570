"""YAML for configs: plain data only, every key once.

:class:`ConfigLoader` is a :class:`yaml.SafeLoader` (nothing is ever executed or
imported) that is stricter still:

- a tag outside the plain YAML types (``!!python/object:...``, ``!foo``,
  ``!!binary``, ``!!timestamp``, ``!!set``, ...) is refused with its line, where
  the safe loader alone would refuse some and turn others into text or dates;
- a key given twice in one mapping, at any depth, is refused with both lines
  (YAML's last-one-wins would hide a typo'd edit);
- dates are not resolved (``run_dir: 2024-01-01`` stays text);
- floats in exponent form without a dot (``lr: 1e-3``) are floats, as in YAML 1.2
  and JSON (YAML 1.1 reads them as text, which strict validation then refuses).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from recis.errors import ConfigError

_CORE = "tag:yaml.org,2002:"
# the plain YAML types; ``merge`` is the ``<<`` key, resolved by the loader itself
PLAIN_TAGS = frozenset(
    _CORE + t for t in ("str", "int", "float", "bool", "null", "map", "seq", "merge")
)

_FLOAT_12 = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class ConfigTagError(yaml.MarkedYAMLError):
    """A node carries a tag outside :data:`PLAIN_TAGS`."""


class DuplicateKeyError(yaml.MarkedYAMLError):
    """A mapping holds the same key twice."""


def _line(mark: Any) -> int:
    return mark.line + 1 if mark is not None else 0


class ConfigLoader(yaml.SafeLoader):
    """SafeLoader for config files and ``--set`` values (see the module docstring)."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != _CORE + "timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        if node.tag not in PLAIN_TAGS:
            tag = "!!" + node.tag[len(_CORE) :] if node.tag.startswith(_CORE) else node.tag
            raise ConfigTagError(
                problem=f"YAML tag {tag!r} is not allowed (configs hold only mappings, "
                "lists, strings, numbers, booleans and null)",
                problem_mark=node.start_mark,
            )
        return super().construct_object(node, deep=deep)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        # a key is its text as written: config mapping keys are names (fields, columns, the
        # label strings of ``values``), and YAML would make ``true:`` the bool True and
        # ``1:`` the int 1, which equal each other and print as "True"
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _CORE + "merge" or not isinstance(key_node, yaml.ScalarNode):
                continue  # ``<<`` merges are meant to be overridden by the keys beside them
            if key_node.tag != _CORE + "str" and key_node.tag != _CORE + "null":
                key_node.tag = _CORE + "str"  # true, 1, 2.5: the text
            key = self.construct_object(key_node)
            line = _line(key_node.start_mark)
            if key in seen:
                raise DuplicateKeyError(
                    problem=f"duplicate key {key!r} (lines {seen[key]} and {line})",
                    problem_mark=key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


ConfigLoader.add_implicit_resolver(_CORE + "float", _FLOAT_12, list("-+0123456789"))


def load_text(text: str, source: str) -> Any:
    """Parse ``text`` with :class:`ConfigLoader`; any YAML problem is one ConfigError line
    that starts with ``source`` and names the line (``source:LINE: ...``)."""
    try:
        return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 (ConfigLoader is a SafeLoader)
    except (ConfigTagError, DuplicateKeyError) as err:
        raise ConfigError(f"{source}:{_line(err.problem_mark)}: {err.problem}") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        what = " ".join(str(x) for x in (err.context, err.problem) if x)
        raise ConfigError(f"{source}:{_line(mark)}: invalid YAML: {what}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: invalid YAML: {err}".replace("\n", " ")) from None
