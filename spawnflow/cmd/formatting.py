"""Small helpers shared by the CLI commands: times and durations for 80 columns."""

from __future__ import annotations

import datetime


def clock(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%H:%M:%S")


def stamp(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def shorten(text: str | None, width: int = 40) -> str:
    if not text:
        return ""
    return text if len(text) <= width else text[: width - 1] + "…"
