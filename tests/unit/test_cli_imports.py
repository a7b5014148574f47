"""The CLI goes through the public library: cmd/ never imports the layers under it.

``spawnflow.cmd`` may use ``spawnflow`` (Agent), ``spawnflow.history``,
``spawnflow.conf``, ``spawnflow.exceptions``, ``spawnflow.engine.admin``,
``spawnflow.engine.audit`` (the read-only host audit) and
``spawnflow.engine.log_context`` (the build and step of a log record);
never ``spawnflow.persistence``, ``spawnflow.flows`` or ``spawnflow.virt`` (nor
the engine's other modules). Read from the source with ``ast``, so an import
inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CMD = Path(__file__).resolve().parents[2] / "spawnflow" / "cmd"
FORBIDDEN = ("spawnflow.persistence", "spawnflow.flows", "spawnflow.virt")
ENGINE_PUBLIC = {"spawnflow.engine.admin", "spawnflow.engine.audit", "spawnflow.engine.log_context"}


def _imported(tree: ast.AST) -> list[str]:
    """Every module name an import statement of ``tree`` names (``from a import b``: a.b)."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return names


def _refused(name: str) -> bool:
    if any(name == layer or name.startswith(layer + ".") for layer in FORBIDDEN):
        return True
    if name.startswith("spawnflow.engine."):
        return not any(name == ok or name.startswith(ok + ".") for ok in ENGINE_PUBLIC)
    return False


@pytest.mark.parametrize("path", sorted(CMD.rglob("*.py")), ids=lambda p: str(p.relative_to(CMD)))
def test_cmd_imports_only_the_public_library(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    refused = sorted({name for name in _imported(tree) if _refused(name)})
    assert not refused, f"{path.name} imports library internals: {refused}"


def test_cmd_uses_no_relative_imports() -> None:
    # A relative import would slip past the names checked above.
    relative = [
        str(path.relative_to(CMD))
        for path in CMD.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.level
    ]
    assert not relative


def test_the_check_sees_what_it_refuses() -> None:
    tree = ast.parse(
        "import spawnflow.persistence.eventlog\n"
        "def f():\n    from spawnflow.flows import spec\n"
        "from spawnflow.engine.agent import Agent\n"
        "from spawnflow.engine import admin\n"
        "from spawnflow import virt\n"
    )
    refused = sorted({name for name in _imported(tree) if _refused(name)})
    assert refused == [
        "spawnflow.engine.agent",
        "spawnflow.engine.agent.Agent",
        "spawnflow.flows",
        "spawnflow.flows.spec",
        "spawnflow.persistence.eventlog",
        "spawnflow.virt",
    ]
