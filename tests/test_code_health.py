"""The package's shape: short functions, modules of one concern, imports in one direction.

The limits are the project's: no function body over 60 lines (docstrings not
counted), no module over 450 lines, no import cycle among jtricks' modules (imports
inside functions included) and no import-order markers in any ``__init__.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "jtricks"
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 450


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = node.body
    if (isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)):
        body = body[1:]  # the docstring
    if not body:
        return 0
    return node.end_lineno - body[0].lineno + 1


def test_the_walk_sees_the_package():
    assert {"jtricks", "jtricks.base", "jtricks.tree", "jtricks.train"} <= set(MODULES)
    assert len(MODULES) > 25


def test_no_function_body_over_60_lines():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = _body_lines(node)
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {n} lines")
    assert not long, long


def test_no_module_over_450_lines():
    long = {name: n for name, path in MODULES.items()
            if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, long


def _imports(name: str, path: Path) -> set[str]:
    """The jtricks modules ``name`` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from jtricks import tree` imports the module jtricks.tree.
            targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES
                       else node.module for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in MODULES and t != name}
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle():
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    # A package's __init__ imports its own modules, which Python may run while the
    # package is half-initialised; that parent-child edge is how packages work. Every
    # other edge must point one way.
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    assert graph["jtricks.tree"] == set(), "tree.py must import nothing from jtricks"
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_order_markers():
    for name, path in MODULES.items():
        if path.name == "__init__.py":
            assert "isort: split" not in path.read_text(), name


def test_every_public_submodule_import_order_is_free():
    # With no cycle, the top-level __init__ may list its imports alphabetically.
    text = (PACKAGE / "__init__.py").read_text()
    froms = [line.split()[1] for line in text.splitlines() if line.startswith("from jtricks")]
    assert froms == sorted(froms)
