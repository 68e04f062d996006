"""No import cycle between pynenc-mongo's modules (issue #10).

Reads every module of ``src/pynenc_mongo`` with :mod:`ast` and follows its imports
of other pynenc-mongo modules, those under ``if TYPE_CHECKING:`` and inside
functions included (a cycle hidden there is still a cycle of the design). An
import of a package's submodule counts as an edge to that submodule only (not to
the package's ``__init__``, which Python runs first but which is not part of the
cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pynenc_mongo

PACKAGE = Path(pynenc_mongo.__file__).resolve().parent
TOP = "pynenc_mongo"


def _module_names() -> dict[str, Path]:
    names: dict[str, Path] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join([TOP, *parts])] = path
    return names


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The pynenc-mongo modules ``name`` imports (absolute or relative, anywhere)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in known:
                    found.add(sub)  # ``from pkg import submodule``
                elif base in known:
                    found.add(base)
    found.discard(name)
    return found - {TOP}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_checker_sees_a_cycle() -> None:
    """The check can fail: a two-module cycle is reported."""
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_no_import_cycle_between_modules() -> None:
    names = _module_names()
    graph = {name: _imports(name, path, set(names)) for name, path in names.items()}
    assert graph["pynenc_mongo.state_backend"], "the import graph was not read"
    assert "pynenc_mongo.store" in graph["pynenc_mongo.state_backend.invocations"]
    assert _cycles(graph) == []
