"""The layers of doc/source/architecture: imports only point down, and no cycles.

Read from the source with ``ast`` (module-level and function-level imports
alike, so a cycle cannot hide inside a function), not by importing.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "spawnflow"

# Top to bottom; a module may import its own layer and the layers below it.
LAYERS = ["cmd", "client", "engine", "flows", "virt", "history", "persistence", "conf"]
# Modules of the package root: the public entry points sit on top, the
# exceptions at the bottom (every layer raises them).
ROOT_LAYER = {"spawnflow": "cmd", "spawnflow.exceptions": "base"}
RANK = {name: i for i, name in enumerate([*LAYERS, "base"])}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _layer(module: str) -> str:
    if module in ROOT_LAYER:
        return ROOT_LAYER[module]
    return module.split(".")[1]


def _imports(module: str) -> set[str]:
    """Every spawnflow module ``module`` imports, resolved to module names."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from a import b`` names module a.b when there is one, else a.
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                for alias in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name.startswith("spawnflow") and name != module:
                found.add(name)
    return found


GRAPH = {module: _imports(module) for module in MODULES}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    rank = RANK[_layer(module)]
    upward = sorted(m for m in GRAPH[module] if RANK[_layer(m)] < rank)
    assert not upward, f"{module} ({_layer(module)}) imports a higher layer: {upward}"


def test_no_import_cycles() -> None:
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for dep in sorted(GRAPH[module]):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
    # A package's __init__ re-exporting its own modules is not a cycle of design.
    real = [
        c for c in cycles if not any(a == b.rpartition(".")[0] for a, b in itertools.pairwise(c))
    ]
    assert not real, "import cycles: " + "; ".join(" -> ".join(c) for c in real)
