"""No import cycles among netmux's modules (parsed with ast, nothing is imported).

A module-level cycle makes the import order matter (one module sees the other half
initialised) and keeps the two from being understood, tested or loaded apart. Imports
inside functions (kept there for start-up cost) close no loop either: a module that needs
a higher one's work is called by it, or reads what it needs from a lower module (state.py,
phonebook/knotconf.py). Imports under `if TYPE_CHECKING:` do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2] / "netmux"


def _name(p: Path) -> str:
    parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _targets(mod: str, is_pkg: bool, node: ast.Import | ast.ImportFrom, mods: set[str]) -> set[str]:
    if isinstance(node, ast.Import):
        found = {a.name for a in node.names}
    else:
        base = mod.split(".") if is_pkg else mod.split(".")[:-1]
        if node.level:
            base = base[: len(base) - (node.level - 1)]
            src = ".".join(base + ([node.module] if node.module else []))
        else:
            src = node.module or ""
        found = {f"{src}.{a.name}" if f"{src}.{a.name}" in mods else src for a in node.names}
    out = set()
    for t in found:
        parts = t.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/ and a/b/ first
            t_i = ".".join(parts[:i])
            if t_i in mods and not mod.startswith(t_i + ".") and t_i != mod:
                out.add(t_i)
    return out


def graphs() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module-level imports, function-level imports) between netmux modules."""
    files = {_name(p): p for p in ROOT.rglob("*.py")}
    mods = set(files)
    top: dict[str, set[str]] = {m: set() for m in mods}
    lazy: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        is_pkg = path.name == "__init__.py"
        typing_only = {
            id(n)
            for stmt in tree.body
            if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test)
            for n in ast.walk(stmt)
        }
        for stmt in tree.body:
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                top[mod] |= _targets(mod, is_pkg, stmt, mods)
        for n in ast.walk(tree):
            nested = n not in tree.body and id(n) not in typing_only
            if isinstance(n, (ast.Import, ast.ImportFrom)) and nested:
                lazy[mod] |= _targets(mod, is_pkg, n, mods)
    return top, lazy


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected groups of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[frozenset[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                group = set()
                while True:
                    w = stack.pop()
                    on.discard(w)
                    group.add(w)
                    if w == v:
                        break
                if len(group) > 1:
                    out.append(frozenset(group))
    return out


def test_the_finder_sees_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]


def test_no_module_level_import_cycle() -> None:
    top, _ = graphs()
    assert "netmux.config" in top["netmux.workload"]  # the parser sees the imports
    assert cycles(top) == []


def test_no_cycle_with_function_level_imports_either() -> None:
    top, lazy = graphs()
    assert "netmux.workload" in lazy["netmux.lab.upstream"]  # the parser sees nested imports
    both = {m: top[m] | lazy[m] for m in top}
    assert cycles(both) == []
