"""The event log: append-only events, projections, and the TaskFlow backend on them."""

from __future__ import annotations

from spawnflow.persistence.backend import EventLogBackend
from spawnflow.persistence.eventlog import EventLog


def open_backend(db_url: str) -> EventLogBackend:
    """A ``taskflow.persistence.base.Backend`` on the event log at ``db_url``."""
    return EventLogBackend({"connection": db_url})


__all__ = ["EventLog", "EventLogBackend", "open_backend"]
