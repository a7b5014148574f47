"""Size limits of the house (CONTRIBUTING.md): modules under 450 lines, functions
at most 60 lines unless a comment right above them says why they are longer."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "spawnflow"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "migrations/versions" not in str(p))


def test_modules_are_small() -> None:
    big = {
        str(p.relative_to(PACKAGE.parent)): n
        for p in _sources()
        if (n := len(p.read_text().splitlines())) >= MAX_MODULE_LINES
    }
    assert not big, f"modules of {MAX_MODULE_LINES} lines or more: {big}"


def test_long_functions_say_why() -> None:
    unexplained = []
    for path in _sources():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            above = lines[first - 2].strip() if first >= 2 else ""
            if length > MAX_FUNCTION_LINES and not above.startswith("#"):
                unexplained.append(
                    f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({length} lines)"
                )
    assert not unexplained, "long functions without a comment saying why: " + ", ".join(unexplained)
