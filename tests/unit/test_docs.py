"""The repository is self-contained: nothing in it points outside it.

Every relative link in the Markdown files resolves to a file inside the
repository, no file names a design document or a directory beside the
checkout, and no file names the checkout's own absolute path. The design
lives in doc/source (built by ``make docs``, warnings as errors).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
THIS = Path(__file__).resolve()

# What is scanned: the files a clone carries (build output and caches are not).
TOP_FILES = ["README.md", "CONTRIBUTING.md", "Makefile", "setup.cfg", "pyproject.toml"]
TREES = ["doc/source", "spawnflow", "tests", "tools", "etc", "bench", "examples", ".ci"]
SKIP_DIRS = {"__pycache__", "build"}
TEXT = {".py", ".md", ".rst", ".txt", ".cfg", ".toml", ".conf", ".sample", ".sh", ".yaml"}
TEXT |= {".yml", ".ini", ".mako", ".json", ".html", ".css", ""}

# Markdown links and images: [text](target) and ![alt](target).
MD_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def _files() -> list[Path]:
    found = [ROOT / name for name in TOP_FILES if (ROOT / name).is_file()]
    for tree in TREES:
        base = ROOT / tree
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if SKIP_DIRS.intersection(path.relative_to(ROOT).parts):
                continue
            if path.is_file() and path.suffix in TEXT and path.resolve() != THIS:
                found.append(path)
    return found


FILES = _files()


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def test_scan_covers_the_repository() -> None:
    names = {_rel(p) for p in FILES}
    assert {"README.md", "CONTRIBUTING.md", "doc/source/index.rst"} <= names


@pytest.mark.parametrize(
    "needle",
    [
        "../shared",  # the directory beside the checkout
        "shared/DESIGN",
    ],
)
def test_nothing_points_beside_the_checkout(needle: str) -> None:
    hits = [_rel(p) for p in FILES if needle in _read(p)]
    assert not hits, f"{needle!r} points outside the repository in: {hits}"


def test_no_design_file_outside_doc() -> None:
    """Design decisions live in doc/source; nothing refers to a design file elsewhere."""
    design = re.compile(r"\bDESIGN\.md\b")
    hits = [_rel(p) for p in FILES if not _rel(p).startswith("doc/") and design.search(_read(p))]
    assert not hits, f"refer to doc/source (architecture) instead of a design file: {hits}"


def test_no_absolute_path_of_the_checkout() -> None:
    hits = [_rel(p) for p in FILES if str(ROOT) + "/" in _read(p)]
    assert not hits, f"{ROOT} is this machine's checkout, not the repository: {hits}"


MARKDOWN = [p for p in FILES if p.suffix == ".md"]


@pytest.mark.parametrize("path", MARKDOWN, ids=_rel)
def test_markdown_links_resolve_inside_the_repository(path: Path) -> None:
    bad = []
    for target in MD_LINK.findall(_read(path)):
        if target.startswith("#") or EXTERNAL.match(target):
            continue
        resolved = (path.parent / target.split("#", 1)[0]).resolve()
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            bad.append(target)
    assert not bad, f"{_rel(path)}: links that do not resolve inside the repository: {bad}"


def test_readme_links_to_the_documentation() -> None:
    links = MD_LINK.findall(_read(ROOT / "README.md"))
    assert "doc/source/index.rst" in links
    assert "CONTRIBUTING.md" in links


def test_make_docs_treats_warnings_as_errors() -> None:
    makefile = _read(ROOT / "Makefile")
    recipe = re.search(r"^docs:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe, "the Makefile has no docs target"
    assert "sphinx-build -W" in recipe.group(1)
    assert "doc/source" in recipe.group(1)
