"""Public history API: read, diagnose, export/import and purge the build history.

    from spawnflow.history import History, import_document

    with History.open(db_url) as history:                 # read-only, never upgrades
        page = history.builds(state="ROLLED_BACK", since="7d", limit=20)
        build = history.build(page[0].build_id)          # BuildHistory (steps, lifecycle)
        print(build.diagnose(vif_plugging_timeout=300).text)
        doc = history.export(build.build_id)             # JSON-able dict
    import_document(other_db_url, doc)                   # refuses duplicates

The package is the read side of the event log: ``model`` (dataclasses),
``fold`` (events -> one build's history), ``reader`` (``History``), ``stats``,
``diagnosis``, ``export`` / ``import_*`` and ``retention``; see README "History".
"""

from __future__ import annotations

from typing import Any

from spawnflow.history.build import BuildHistory
from spawnflow.history.diagnosis import diagnose
from spawnflow.history.export import dumps as dumps_document
from spawnflow.history.export import import_build
from spawnflow.history.export import read as read_document
from spawnflow.history.import_check import check_document
from spawnflow.history.import_values import DuplicateBuild, InvalidExport
from spawnflow.history.model import (
    FORWARD,
    REVERT,
    AgentLease,
    BuildRecord,
    BuildSummary,
    Diagnosis,
    Event,
    EventWait,
    ExternalEvent,
    Interruption,
    Span,
    Stats,
    StepHistory,
    StepStats,
    Transition,
)
from spawnflow.history.reader import History
from spawnflow.history.retention import count_purgeable as _count_purgeable
from spawnflow.history.retention import purge as _purge
from spawnflow.history.times import parse_time
from spawnflow.persistence import lifecycle
from spawnflow.persistence.eventlog import EventLog
from spawnflow.persistence.log_wait import LogWait
from spawnflow.persistence.log_wait import read as log_wait
from spawnflow.persistence.redact import mask_url


def import_document(
    db_url: str, document: dict[str, Any], *, allow_unfinished: bool = False
) -> str:
    """Import an export document into the database at ``db_url``; return the build id.

    The database must be a spawnflow one (an empty one is created/upgraded).
    A malformed document is refused (InvalidExport) before the database is
    even opened, so a refused import never creates one either.
    """
    check_document(document)
    with EventLog.open(db_url) as eventlog:
        return import_build(eventlog, document, allow_unfinished=allow_unfinished)


def purge(db_url: str, older_than_days: float, batch_size: int = 500) -> int:
    """Delete finished builds older than ``older_than_days``; return how many."""
    with EventLog.open(db_url, upgrade=False) as eventlog:
        return _purge(eventlog, older_than_days, batch_size=batch_size)


def count_purgeable(db_url: str, older_than_days: float) -> int:
    """How many builds ``purge(db_url, older_than_days)`` would delete now (nothing is)."""
    with EventLog.open(db_url, upgrade=False) as eventlog:
        return _count_purgeable(eventlog, older_than_days)


__all__ = [
    "FORWARD",
    "REVERT",
    "AgentLease",
    "BuildHistory",
    "BuildRecord",
    "BuildSummary",
    "Diagnosis",
    "DuplicateBuild",
    "Event",
    "EventWait",
    "ExternalEvent",
    "History",
    "Interruption",
    "InvalidExport",
    "LogWait",
    "Span",
    "Stats",
    "StepHistory",
    "StepStats",
    "Transition",
    "count_purgeable",
    "diagnose",
    "dumps_document",
    "import_document",
    "lifecycle",
    "log_wait",
    "mask_url",
    "parse_time",
    "purge",
    "read_document",
]
