"""Text the CLI prints: terminal-safe strings, and tables and paragraphs for 80 columns.

Every stored string the CLI prints goes through ``safe``: a name or an error
came from a caller or an imported document, and must not drive the operator's
terminal (escape sequences) or disguise itself (bidi overrides, invisible
characters).

Table output is pre-fitted: flexible columns (names, errors, payloads) are
shortened with "…" so that cliff's table (``| a | b |``) fits the terminal, 80
columns when stdout is not a terminal.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import textwrap
import unicodedata
from collections.abc import Sequence
from typing import Any, TextIO

from cliff.formatters.table import TableFormatter

WIDTH = 80  # operators read this on a console at 3 am

# Controls (C0, DEL, C1), format characters (bidi overrides and isolates,
# zero-width characters, BOM), lone surrogates, line and paragraph separators.
_UNSAFE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return (
        f"\\x{code:02x}"
        if code < 0x100
        else (f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    )


def safe(text: Any, keep: str = "") -> str:
    """``text`` with every character a terminal would act on or that hides or reorders
    text shown as an escape (``\\x1b``, ``\\u202e``): for any stored string the CLI prints.

    ``keep``: characters to leave as they are (``"\\n\\t"`` for a file's multi-line
    text). Printable text (the usual case) is returned as it is; the escapes are
    plain ASCII, so ``safe(safe(x)) == safe(x)``.
    """
    shown = text if isinstance(text, str) else str(text)
    if shown.isprintable():
        return shown
    return "".join(
        _escape(ch) if ch not in keep and unicodedata.category(ch) in _UNSAFE else ch
        for ch in shown
    )


def shorten(text: str | None, width: int = 40) -> str:
    if not text:
        return ""
    text = safe(" ".join(str(text).split()))  # one line, nothing a terminal acts on
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def table_width() -> int:
    """80, or the terminal's width when stdout is a wider terminal."""
    try:
        if sys.stdout.isatty():
            return max(WIDTH, shutil.get_terminal_size((WIDTH, 24)).columns)
    except (AttributeError, ValueError, OSError):
        pass
    return WIDTH


def fit(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    flexible: dict[str, int],
    width: int | None = None,
) -> list[tuple[Any, ...]]:
    """Shorten the ``flexible`` columns ({name: minimum width}) so the table fits ``width``.

    The widest flexible column gives up a character first; no column shrinks below
    its minimum or its header. Other columns keep their text.
    """
    width = width or table_width()
    cells = [[("" if v is None else safe(" ".join(str(v).split()))) for v in row] for row in rows]
    natural = [max([len(col)] + [len(row[i]) for row in cells]) for i, col in enumerate(columns)]
    widths = list(natural)
    excess = sum(widths) + 3 * len(columns) + 1 - width
    floors = {i: max(flexible[c], len(c)) for i, c in enumerate(columns) if c in flexible}
    while excess > 0:
        candidates = [i for i, floor in floors.items() if widths[i] > floor]
        if not candidates:
            break
        widest = max(candidates, key=lambda i: widths[i])
        widths[widest] -= 1
        excess -= 1
    return [
        tuple(
            shorten(cell, widths[i])
            if i in floors
            else (cell if isinstance(row[i], str) else row[i])
            for i, cell in enumerate(cells[n])
        )
        for n, row in enumerate(rows)
    ]


def wrap(label: str, text: str, width: int | None = None, indent: int = 10) -> list[str]:
    """``label`` padded to ``indent`` and ``text`` wrapped under it."""
    width = width or table_width()
    return textwrap.wrap(
        safe(" ".join(str(text).split())),
        width,
        initial_indent=label.ljust(indent),
        subsequent_indent=" " * indent,
        break_long_words=True,
        break_on_hyphens=False,
    ) or [label]


def emit_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], stream: TextIO) -> None:
    """Write ``rows`` as cliff's table, as a Lister prints it by default.

    For a command that prints a table after other text and returns its own exit
    status (``spawn``). The formatter's options are its own defaults, honouring
    ``CLIFF_MAX_TERM_WIDTH`` and ``CLIFF_FIT_WIDTH`` like every listing.
    """
    formatter = TableFormatter()
    parser = argparse.ArgumentParser(add_help=False)
    formatter.add_argument_group(parser)
    formatter.emit_list(columns, rows, stream, parser.parse_args([]))
