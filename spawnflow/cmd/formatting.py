"""Small helpers shared by the CLI commands: times, durations and tables for 80 columns.

Every time the CLI prints is UTC. Table output is pre-fitted: flexible columns
(names, errors, payloads) are shortened with "…" so that cliff's table
(``| a | b |``) fits the terminal, 80 columns when stdout is not a terminal.
"""

from __future__ import annotations

import datetime
import shutil
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

# clock(ts): HH:MM:SS UTC, the same in tables as in diagnoses.
from spawnflow.persistence.diagnosis import clock as clock

WIDTH = 80  # operators read this on a console at 3 am


def clock_ms(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%H:%M:%S.%f")[:-3]


def stamp(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def short_stamp(ts: float | None) -> str:
    """``MM-DD HH:MM`` (UTC): a start time in 11 columns."""
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%m-%d %H:%M")


def iso(ts: float | None) -> str | None:
    """ISO 8601 with milliseconds and Z, for machine-readable formats."""
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def human(value: float | None) -> str:
    """0.148s, 12.345s, 2m05s, 3h00m20s, 2d03h: a duration for sentences."""
    if value is None:
        return "-"
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
    text = " ".join(str(text).split())  # one line
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def table_width() -> int:
    """80, or the terminal's width when stdout is a wider terminal."""
    try:
        if sys.stdout.isatty():
            return max(WIDTH, shutil.get_terminal_size((WIDTH, 24)).columns)
    except (AttributeError, ValueError, OSError):
        pass
    return WIDTH


def fit(columns: Sequence[str], rows: Sequence[Sequence[Any]], flexible: dict[str, int],
        width: int | None = None) -> list[tuple]:
    """Shorten the ``flexible`` columns ({name: minimum width}) so the table fits ``width``.

    The widest flexible column gives up a character first; no column shrinks below
    its minimum or its header. Other columns keep their text.
    """
    width = width or table_width()
    cells = [[("" if v is None else " ".join(str(v).split())) for v in row] for row in rows]
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
    return [tuple(shorten(cell, widths[i]) if i in floors
                  else (cell if isinstance(row[i], str) else row[i])
                  for i, cell in enumerate(cells[n])) for n, row in enumerate(rows)]


def wrap(label: str, text: str, width: int | None = None, indent: int = 10) -> list[str]:
    """``label`` padded to ``indent`` and ``text`` wrapped under it."""
    width = width or table_width()
    return textwrap.wrap(" ".join(str(text).split()), width,
                         initial_indent=label.ljust(indent), subsequent_indent=" " * indent,
                         break_long_words=True, break_on_hyphens=False) or [label]
