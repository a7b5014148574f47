"""Public history API: read, diagnose, export/import and purge the build history.

    from spawnflow.history import History, import_document

    with History.open(db_url) as history:                 # read-only, never upgrades
        page = history.builds(state="ROLLED_BACK", since="7d", limit=20)
        build = history.build(page[0].build_id)          # BuildHistory (steps, lifecycle)
        print(build.diagnose(vif_plugging_timeout=300).text)
        doc = history.export(build.build_id)             # JSON-able dict
    import_document(other_db_url, doc)                   # refuses duplicates

See ``spawnflow.persistence.history`` for the model and README "History".
"""

from __future__ import annotations

from typing import Any

from spawnflow.persistence.diagnosis import diagnose
from spawnflow.persistence.eventlog import EventLog
from spawnflow.persistence.export import (
    DuplicateBuild,
    InvalidExport,
    check_document,
    import_build,
)
from spawnflow.persistence.history import (
    BuildHistory,
    BuildSummary,
    Diagnosis,
    Event,
    EventWait,
    ExternalEvent,
    History,
    Interruption,
    Span,
    Stats,
    StepHistory,
    StepStats,
    Transition,
    parse_time,
)
from spawnflow.persistence.retention import purge as _purge


def import_document(
    db_url: str, document: dict[str, Any], *, allow_unfinished: bool = False
) -> str:
    """Import an export document into the database at ``db_url``; return the build id.

    The database must be a spawnflow one (an empty one is created/upgraded).
    A malformed document is refused (InvalidExport) before the database is
    even opened, so a refused import never creates one either.
    """
    check_document(document)
    eventlog = EventLog.open(db_url)
    try:
        return import_build(eventlog, document, allow_unfinished=allow_unfinished)
    finally:
        eventlog.close()


def purge(db_url: str, older_than_days: float, batch_size: int = 500) -> int:
    """Delete finished builds older than ``older_than_days``; return how many."""
    eventlog = EventLog.open(db_url, upgrade=False)
    try:
        return _purge(eventlog, older_than_days, batch_size=batch_size)
    finally:
        eventlog.close()


__all__ = [
    "BuildHistory",
    "BuildSummary",
    "Diagnosis",
    "DuplicateBuild",
    "Event",
    "EventWait",
    "ExternalEvent",
    "History",
    "Interruption",
    "InvalidExport",
    "Span",
    "Stats",
    "StepHistory",
    "StepStats",
    "Transition",
    "diagnose",
    "import_document",
    "parse_time",
    "purge",
]
