"""Package names that load on first use (PEP 562), for packages whose public names need
torch while some of their submodules do not (``recis.io``, ``recis.train``)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_names(package: str, home: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``name`` in ``home`` is imported from the
    submodule ``home[name]`` on first use and kept in the package (later lookups do not come
    back here); any other name is an AttributeError."""

    def __getattr__(name: str) -> Any:
        if name not in home:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{home[name]}"), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
