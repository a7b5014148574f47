"""Small helpers shared by the CLI commands: times, durations and tables for 80 columns.

Every time the CLI prints is UTC. Table output is pre-fitted: flexible columns
(names, errors, payloads) are shortened with "…" so that cliff's table
(``| a | b |``) fits the terminal, 80 columns when stdout is not a terminal.

Every stored string the CLI prints goes through ``safe``: a name or an error
came from a caller or an imported document, and must not drive the operator's
terminal (escape sequences) or disguise itself (bidi overrides, invisible
characters). A stored time no date can show is printed as a number, not a crash.
"""

from __future__ import annotations

import datetime
import math
import shutil
import sys
import textwrap
import unicodedata
from collections.abc import Sequence
from typing import Any

# clock(ts): HH:MM:SS UTC, the same in tables as in diagnoses.
from spawnflow.persistence.diagnosis import clock as clock

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
    text = text if isinstance(text, str) else str(text)
    if text.isprintable():
        return text
    return "".join(
        _escape(ch) if ch not in keep and unicodedata.category(ch) in _UNSAFE else ch for ch in text
    )


def _utc(ts: float) -> datetime.datetime | None:
    """The UTC moment of ``ts``, or None when no date can show it (1e12, inf, NaN)."""
    try:
        return datetime.datetime.fromtimestamp(ts, datetime.UTC)
    except (OverflowError, ValueError, OSError, TypeError):
        return None


def _raw(ts: Any) -> str:
    """A stored time no date can show, as the number it is (an older or damaged row)."""
    return f"{ts:.6g}" if isinstance(ts, (int, float)) else safe(ts)


def clock_ms(ts: float | None) -> str:
    if ts is None:
        return "-"
    moment = _utc(ts)
    return _raw(ts) if moment is None else moment.strftime("%H:%M:%S.%f")[:-3]


def stamp(ts: float | None) -> str:
    if ts is None:
        return "-"
    moment = _utc(ts)
    return _raw(ts) if moment is None else moment.strftime("%Y-%m-%d %H:%M:%SZ")


def short_stamp(ts: float | None) -> str:
    """``MM-DD HH:MM`` (UTC): a start time in 11 columns."""
    if ts is None:
        return "-"
    moment = _utc(ts)
    return _raw(ts) if moment is None else moment.strftime("%m-%d %H:%M")


def iso(ts: float | None) -> str | None:
    """ISO 8601 with milliseconds and Z, for machine-readable formats."""
    if ts is None:
        return None
    moment = _utc(ts)
    if moment is None:
        return _raw(ts)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def human(value: float | None) -> str:
    """0.148s, 12.345s, 2m05s, 3h00m20s, 2d03h: a duration for sentences."""
    if value is None:
        return "-"
    if not math.isfinite(value):
        return "?"
    if value < 60:
        return f"{value:.3f}s"
    minutes, secs = divmod(int(value), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{hours // 24}d{hours % 24:02d}h"


def took(value: float | None) -> str:
    """A duration in at most 5 columns: <1ms 12ms 1.23s 12.3s 123s 17m05 5h07 12d."""
    if value is None:
        return "-"
    if not math.isfinite(value):
        return "?"
    value = max(0.0, value)
    if value < 0.0005:
        return "<1ms"
    if value < 0.9995:
        return f"{value * 1000:.0f}ms"
    if value < 9.995:
        return f"{value:.2f}s"
    if value < 99.95:
        return f"{value:.1f}s"
    if value < 999.5:
        return f"{value:.0f}s"
    minutes, secs = divmod(int(value), 60)
    if minutes < 100:
        return f"{minutes}m{secs:02d}"
    hours, minutes = divmod(minutes, 60)
    if hours < 100:
        return f"{hours}h{minutes:02d}"
    return f"{hours // 24}d"


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


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
) -> list[tuple]:
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
