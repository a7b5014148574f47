"""Times of the history: reading a time an operator gives, showing one in words.

``parse_time`` takes what ``--since``/``--until`` accept (a timestamp, a
datetime, ISO 8601 or an age like ``7d``); ``clock`` and ``age`` are how the
diagnosis shows a moment (UTC) and a duration.
"""

from __future__ import annotations

import datetime
import re
import time

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(
    value: float | int | str | datetime.datetime | None, now: float | None = None
) -> float | None:
    """A POSIX timestamp from a timestamp, a datetime (naive = UTC), an ISO 8601 string
    (``2024-05-01``, ``2024-05-01T12:00``, ``2024-05-01 12:00:00+02:00``, ``...Z``)
    or an age (``90m``, ``2h``, ``7d``: that long before now)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"not a time: {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, datetime.datetime):
        moment = value
    else:
        text = str(value).strip()
        age = _AGE.match(text)
        if age:
            return (time.time() if now is None else now) - float(age[1]) * _UNIT[age[2]]
        try:
            moment = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"cannot read time {text!r}: give ISO 8601 (2024-05-01, 2024-05-01T12:00, "
                "2024-05-01T12:00:00Z) or an age (90m, 2h, 7d)"
            ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def clock(ts: float | None) -> str:
    """``HH:MM:SS`` (UTC) of a timestamp; ``-`` for none."""
    if ts is None:
        return "-"
    try:
        return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%H:%M:%S")
    except (OverflowError, ValueError, OSError):
        return f"{ts:.6g}"  # a stored time no date can show (an older or damaged row)


def age(seconds: float) -> str:
    """A duration in the fewest characters that still read well: ``0.250s``, ``3m12s``."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{seconds:.3f}s"
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 120:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 120:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"
