"""The package's layers import downward only, and no modules import each other in a cycle.

Read from the source (AST), not by importing: every ``import`` and ``from ... import`` of a
``recis`` module, at module level or inside a function, is an edge. The layers, bottom to top
(docs/architecture.md); a package may import its own layer and the layers below it:

    types        recis (the package's __init__), errors, lazy, features, config_yaml, config_base,
                 config
    ops          recis.ops
    io           recis.io
    engines      recis.embedding, recis.optim, recis.metrics (pure metric math: models use it)
    models       recis.models
    synthetic    recis.synthetic (data with known ground truth: data.synthetic, benchmarks)
    train        recis.train
    distributed  recis.distributed (and the one run entry, recis.distributed.run)
    applications recis.llm, recis.retrieval_rl, recis.prune, recis.doctor, recis.recipe,
                 recis.init_command, recis.split_command (later export, serve, index, rl)
    entry        recis.cli

A new top-level package or module must be placed in ``LAYERS`` (the test says so by name).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# where each part of the installed package lives (pyproject's package-dir)
SOURCES = {
    "recis": ROOT / "recis",
    "recis.io": ROOT / "io",
    "recis.ops": ROOT / "ops",
    "recis.models": ROOT / "models",
}
LAYERS: list[tuple[str, list[str]]] = [
    (
        "types",
        [
            "recis",
            "recis.errors",
            "recis.lazy",
            "recis.features",
            "recis.config_yaml",
            "recis.config_base",
            "recis.config",
        ],
    ),
    ("ops", ["recis.ops"]),
    ("io", ["recis.io"]),
    ("engines", ["recis.embedding", "recis.optim", "recis.metrics"]),
    ("models", ["recis.models"]),
    ("synthetic", ["recis.synthetic"]),
    ("train", ["recis.train"]),
    ("distributed", ["recis.distributed"]),
    (
        "applications",
        [
            "recis.llm",
            "recis.retrieval_rl",
            "recis.prune",
            "recis.doctor",
            "recis.recipe",
            "recis.init_command",
            "recis.split_command",
            "recis.export",
            "recis.serve",
            "recis.index",
            "recis.rl",
        ],
    ),
    ("entry", ["recis.cli"]),
]


@dataclass(frozen=True)
class Edge:
    """``source`` imports ``target`` at ``line`` of ``path``."""

    source: str
    target: str
    path: Path
    line: int


def modules(sources: dict[str, Path]) -> dict[str, Path]:
    """Module name -> file, for every ``.py`` file under the source folders."""
    out: dict[str, Path] = {}
    for package, folder in sources.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            nested = f"{package}.{parts[0]}" if parts else package
            if nested in sources and nested != package:  # laid elsewhere (recis/io vs io/)
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The module ``name`` is or lives in (``recis.io.Batch`` -> ``recis.io``)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def edges(known: dict[str, Path], root: str = "recis") -> Iterator[Edge]:
    """Every import of a module of ``root`` by a module of ``known``."""
    for module, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [(a.name, node.lineno) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node, module, path.name == "__init__.py")
                # ``from pkg import sub`` imports the module pkg.sub when there is one
                names = [(f"{base}.{a.name}", node.lineno) for a in node.names]
            else:
                continue
            for name, line in names:
                if name != root and not name.startswith(root + "."):
                    continue
                target = _resolve(name, known)
                if target is not None and target != module:
                    yield Edge(module, target, path, line)


def layer_of(module: str, layers: list[tuple[str, list[str]]]) -> int | None:
    """Index of the layer holding ``module``: its longest listed prefix (the root package,
    ``recis``, stands for its ``__init__`` alone, not for everything under it)."""
    best: tuple[int, int] | None = None
    for i, (_, members) in enumerate(layers):
        for m in members:
            inside = module == m or ("." in m and module.startswith(m + "."))
            if inside and (best is None or len(m) > best[1]):
                best = (i, len(m))
    return None if best is None else best[0]


def upward(found: Iterable[Edge], layers: list[tuple[str, list[str]]]) -> list[str]:
    """One line per import of a higher layer (or of/by a module in no layer)."""
    out = []
    for e in found:
        src, dst = layer_of(e.source, layers), layer_of(e.target, layers)
        if src is None or dst is None:
            missing = e.source if src is None else e.target
            out.append(f"{missing}: in no layer (add it to LAYERS in tests/test_layers.py)")
        elif dst > src:
            out.append(
                f"{e.path.relative_to(e.path.parents[1])}:{e.line}: {e.source} "
                f"({layers[src][0]}) imports {e.target} ({layers[dst][0]})"
            )
    return sorted(set(out))


def cycles(found: Iterable[Edge]) -> list[list[str]]:
    """Groups of modules that import each other, directly or through others (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for e in found:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


@pytest.fixture(scope="module")
def recis_edges() -> list[Edge]:
    return list(edges(modules(SOURCES)))


def test_every_module_is_in_a_layer() -> None:
    unplaced = [m for m in modules(SOURCES) if layer_of(m, LAYERS) is None]
    assert not unplaced, f"place these in LAYERS (tests/test_layers.py): {unplaced}"


def test_recis_imports_downward_only(recis_edges: list[Edge]) -> None:
    assert len(recis_edges) > 100  # the scan sees the package (it is not an empty pass)
    bad = upward(recis_edges, LAYERS)
    assert not bad, "imports of a higher layer:\n" + "\n".join(bad)


def test_recis_has_no_import_cycle(recis_edges: list[Edge]) -> None:
    found = cycles(recis_edges)
    assert not found, f"modules importing each other: {found}"


def _package(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    """A package ``recis`` under ``tmp_path`` with these files, scanned like the real one."""
    for rel, text in files.items():
        path = tmp_path / "recis" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return modules({"recis": tmp_path / "recis"})


def test_a_planted_upward_import_is_found(tmp_path: Path) -> None:
    known = _package(
        tmp_path,
        {
            "__init__.py": "",
            "errors.py": "",
            "io/__init__.py": "from recis.errors import *\n",
            # a reader reaching up into the trainer, inside a function (still an import)
            "io/reader.py": "def f():\n    from ..train.trainer import Trainer\n",
            "train/__init__.py": "",
            "train/trainer.py": "from recis.io import reader\nclass Trainer: ...\n",
        },
    )
    found = list(edges(known))
    assert {(e.source, e.target) for e in found} == {
        ("recis.io", "recis.errors"),
        ("recis.io.reader", "recis.train.trainer"),
        ("recis.train.trainer", "recis.io.reader"),
    }
    bad = upward(found, LAYERS)
    assert len(bad) == 1 and "recis.io.reader (io) imports recis.train.trainer (train)" in bad[0]
    assert bad[0].startswith("io/reader.py:2: ")
    assert cycles(found) == [["recis.io.reader", "recis.train.trainer"]]


def test_a_module_outside_every_layer_is_named(tmp_path: Path) -> None:
    known = _package(tmp_path, {"__init__.py": "", "newpkg.py": "import recis.errors\n"})
    known["recis.errors"] = known["recis"]  # stands in for the real module
    bad = upward(edges(known), LAYERS)
    assert bad == ["recis.newpkg: in no layer (add it to LAYERS in tests/test_layers.py)"]
