"""Times and durations as the CLI prints them: one formatter for each, in a few styles.

Every time the CLI prints is UTC. A stored time no date can show (1e12, inf,
NaN: an older or damaged row) is printed as the number it is, not a crash; a
duration that is not finite is printed as ``?``.

Durations come in the styles the places that show them need:

- ``Duration.SENTENCE``: ``0.148s``, ``2m05s``, ``3h00m20s``, ``2d03h`` (summaries);
- ``Duration.COLUMN``: at most 5 columns, ``<1ms 12ms 1.23s 12.3s 123s 17m05 5h07 12d``
  (tables);
- ``Duration.OFFSET``: ``+0.25s``, ``+2m05s``, ``+3h00m05s`` (a tick's distance from
  the start of a chart);
- ``Duration.SECONDS``: ``0.148s``, ``125.000s`` (tooltips, the HTML step table).
"""

from __future__ import annotations

import datetime
import enum
import math
from collections.abc import Callable

from spawnflow.cmd.render.text import safe


class Duration(enum.Enum):
    SENTENCE = "sentence"
    COLUMN = "column"
    OFFSET = "offset"
    SECONDS = "seconds"


class Stamp(enum.Enum):
    """strftime formats of a moment (ISO 8601 is its own case: see ``timestamp``)."""

    CLOCK = "%H:%M:%S"  # the same in tables as in diagnoses
    CLOCK_MS = "%H:%M:%S.%f"  # the last three digits are cut: milliseconds
    DATE_TIME = "%Y-%m-%d %H:%M:%SZ"
    SHORT = "%m-%d %H:%M"  # a start time in 11 columns
    ISO = "iso"  # ISO 8601 with milliseconds and Z, for machine-readable formats


def timestamp(ts: float | None, style: Stamp = Stamp.DATE_TIME) -> str:
    """``ts`` (seconds since the epoch) as a UTC time in ``style``; ``-`` for None."""
    if ts is None:
        return "-"
    try:
        moment = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    except (OverflowError, ValueError, OSError, TypeError):
        return f"{ts:.6g}" if isinstance(ts, (int, float)) else safe(ts)
    if style is Stamp.ISO:
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    text = moment.strftime(style.value)
    return text[:-3] if style is Stamp.CLOCK_MS else text


def iso(ts: float | None) -> str | None:
    """ISO 8601 (``Stamp.ISO``), or None (JSON null) when there is no time."""
    return None if ts is None else timestamp(ts, Stamp.ISO)


def duration(value: float | None, style: Duration = Duration.SENTENCE) -> str:
    """``value`` seconds in ``style``; ``-`` for None, ``?`` for inf and NaN."""
    if value is None:
        return "-"
    if not math.isfinite(value):
        return "?"
    if style is Duration.SECONDS:
        return f"{value:.3f}s"
    if style is Duration.COLUMN:
        return _column(max(0.0, value))
    if style is Duration.OFFSET:
        return _offset(value)
    return _sentence(value)


def _sentence(value: float) -> str:
    if value < 60:
        return f"{value:.3f}s"
    minutes, secs = divmod(int(value), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{hours // 24}d{hours % 24:02d}h"


# (below this many seconds, format): the sub-second and seconds rungs of COLUMN.
_COLUMN_SECONDS: tuple[tuple[float, Callable[[float], str]], ...] = (
    (0.0005, lambda v: "<1ms"),
    (0.9995, lambda v: f"{v * 1000:.0f}ms"),
    (9.995, lambda v: f"{v:.2f}s"),
    (99.95, lambda v: f"{v:.1f}s"),
    (999.5, lambda v: f"{v:.0f}s"),
)


def _column(value: float) -> str:
    for below, shown in _COLUMN_SECONDS:
        if value < below:
            return shown(value)
    minutes, secs = divmod(int(value), 60)
    if minutes < 100:
        return f"{minutes}m{secs:02d}"
    hours, minutes = divmod(minutes, 60)
    if hours < 100:
        return f"{hours}h{minutes:02d}"
    return f"{hours // 24}d"


def _offset(value: float) -> str:
    whole = int(value)
    frac = f"{value - whole:.3f}".rstrip("0").rstrip(".")[1:]  # ".25" or ""
    if value < 60:
        return f"+{whole}{frac}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"+{minutes}m{secs:02d}{frac}s"
    hours, minutes = divmod(minutes, 60)
    return f"+{hours}h{minutes:02d}m{secs:02d}{frac}s"


def rounded(value: float | None, digits: int = 3) -> float | None:
    """A duration for machine-readable formats: seconds, rounded, or None."""
    return None if value is None else round(value, digits)


__all__ = ["Duration", "Stamp", "duration", "iso", "rounded", "timestamp"]
