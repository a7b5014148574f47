"""Builds waiting for the event log, told to readers through a small file beside it.

While the log cannot take a write (locked, full disk, server restarting) the
agent cannot record that it is waiting in the log itself. It keeps the facts
in ``<state_path>/log-wait-<host>.json`` instead, where ``history show
--diagnose`` finds them. The disk that fills up is often the log's own, so the
file is made at its full size when the agent starts (``reserve``) and then
only ever overwritten in place, the JSON padded with spaces: rewriting blocks
a file already owns needs no free space. Writing it is still best effort
(never raises); a reader that catches it half-written reads nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

SIZE = 64 * 1024  # bytes: room for a few hundred waiting builds


@dataclass(frozen=True)
class LogWait:
    """One build held because the log failed: since when, how many retries, the error."""

    build_id: str
    since: float
    attempts: int
    error: str


def _path(state_path: str, host: str) -> Path:
    # A host name is free text in the configuration; keep the file name plain.
    return Path(state_path) / f"log-wait-{re.sub(r'[^A-Za-z0-9._-]', '_', host)}.json"


def reserve(state_path: str, host: str) -> None:
    """Make the file at its full size, saying nobody waits (at agent start, while there
    is room)."""
    write(state_path, host, [])


def write(state_path: str, host: str, waits: list[LogWait]) -> None:
    """Overwrite the file in place with ``waits`` (as many as fit); never raises OSError."""
    entries = [asdict(w) for w in waits]
    while True:
        body = json.dumps({"pid": os.getpid(), "builds": entries}).encode()
        if len(body) <= SIZE or not entries:
            break
        entries.pop()
    with contextlib.suppress(OSError):
        fd = os.open(_path(state_path, host), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, body.ljust(SIZE), 0)
        finally:
            os.close(fd)


def _alive(pid: int) -> None:
    """Raise ProcessLookupError unless ``pid`` runs (another user's process does)."""
    with contextlib.suppress(PermissionError):
        os.kill(pid, 0)


def read(state_path: str, host: str, build_id: str) -> LogWait | None:
    """The wait of ``build_id`` on ``host``, if its agent is waiting for the log now.

    A file whose writer is gone (an agent that exited while waiting) says nothing.
    """
    try:
        doc = json.loads(_path(state_path, host).read_bytes())
        _alive(int(doc["pid"]))
        for entry in doc["builds"]:
            if entry.get("build_id") == build_id:
                return LogWait(
                    build_id=str(entry["build_id"]),
                    since=float(entry["since"]),
                    attempts=int(entry["attempts"]),
                    error=str(entry["error"]),
                )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None
