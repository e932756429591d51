"""The house's shape: no import circle between modules, no module past the size a reader takes in
at once, and the README's package map naming exactly the packages the code has."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOP_LEVEL = ("hybridrec", "udfs", "jobs", "pipelines")
MAX_LINES = 500


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for top in TOP_LEVEL
        for path in sorted((REPO / top).rglob("*.py"))
        if "__pycache__" not in path.parts
    }


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports anywhere in its file (a function-level import is
    an arrow too: it only postpones the circle)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # ``from pkg import module`` imports the module; ``from module import name`` the module.
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
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


def _ancestors(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def test_no_module_imports_itself_back_through_others():
    graph = _graph()
    # A package's __init__ runs before its modules: an arrow from a module to its own package
    # is not a circle the reader has to follow.
    graph = {
        name: {t for t in targets if t not in _ancestors(name)} for name, targets in graph.items()
    }
    assert _cycles(graph) == []


def test_the_cycle_finder_sees_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("name", sorted(_modules()))
def test_no_module_is_a_giant(name):
    lines = len(_modules()[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines: split it along what it owns"


def test_every_package_says_what_it_owns():
    for name, path in _modules().items():
        if path.name == "__init__.py" and name.startswith("hybridrec."):
            assert ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))), name


def test_the_readmes_package_map_matches_the_code():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    mapped = set(
        re.findall(r"^- `((?:hybridrec|udfs|jobs|pipelines)(?:/[a-z_]+)*)/`", section, re.M)
    )
    packages = {
        _module_name(path).replace(".", "/") for path in REPO.glob("hybridrec/*/__init__.py")
    } | {"hybridrec", "udfs", "jobs", "pipelines"}
    assert mapped == packages
