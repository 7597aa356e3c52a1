"""The shape of the code, checked: no import cycles between chatplane's modules,
no imports hidden in functions to get around one, the turn engine's modules small.

Read from the source with ``ast`` (nothing is imported): a module's imports
are those at its top level, ``if TYPE_CHECKING:`` blocks left out (they never
run). The command line imports its commands' modules when a command runs
(startup time), which is allowed there only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import chatplane

ROOT = Path(chatplane.__file__).parent
LAZY_IMPORTS_ALLOWED = {"chatplane.cli"}  # each command imports what it needs when it runs
TURN_MODULE_LINES = 400


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if "migrations" in parts:
            continue
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imported(node: ast.AST, modules: dict[str, Path]) -> set[str]:
    """The chatplane modules ``node`` (an import statement) imports (the code
    imports absolutely: ``from chatplane.x import y``)."""
    names: set[str] = set()
    if isinstance(node, ast.Import):
        names = {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        names = {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name in modules}


def _graph() -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    hidden: list[tuple[str, int, str]] = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text())
        top = [node for node in tree.body if not _is_type_checking(node)]
        graph[module] = set().union(*(_imported(node, modules) for node in top)) - {module}
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Import | ast.ImportFrom) and _imported(inner, modules):
                        hidden.append((module, inner.lineno, ast.unparse(inner)))
    return graph, hidden


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
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


def test_no_import_cycles() -> None:
    graph, _ = _graph()
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_imports_hidden_in_functions() -> None:
    _, hidden = _graph()
    assert [found for found in hidden if found[0] not in LAZY_IMPORTS_ALLOWED] == []


def test_the_turn_engines_modules_are_small() -> None:
    sizes = {path.name: len(path.read_text().splitlines()) for path in (ROOT / "chats" / "turn").glob("*.py")}
    assert sizes and max(sizes.values()) <= TURN_MODULE_LINES, sizes
