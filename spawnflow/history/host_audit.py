"""The host audit's events in the log, and reading back its last findings.

The agent's host audit (``engine.audit``) writes ``audit`` events with no
build id, like the ``agent`` events (``name`` is the host): ``FOUND`` when
what it finds changes, with the counts and, per ACTIVE build, what the host
lacks; ``REAP`` before each orphan ``spawnflow host audit --reap`` removes
(``REAP_FAILED`` after one that failed, with the error), with the owning
build as ``subject``, what it was and why. No build id: a
build's own events are only its lifecycle and its steps (an export of the
build stays importable), and an orphan's marker may name no build of the
log at all. ``last_findings`` is what the diagnosis of an ACTIVE build reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from spawnflow.persistence import tables as t

AUDIT = "audit"  # event kind
FOUND = "FOUND"  # to_state of a findings event


@dataclass(frozen=True)
class AuditNote:
    """What the last recorded host audit found missing of one ACTIVE build (``missing``)."""

    at: float
    missing: tuple[str, ...]


def last_findings(conn: sa.Connection, host: str, build_id: str) -> AuditNote | None:
    """The last ``FOUND`` event of ``host``'s audit, as it concerns ``build_id`` (None: none)."""
    e = t.events.c
    row = conn.execute(
        sa.select(e.ts, e.payload)
        .where(
            e.build_id.is_(None),
            e.kind == AUDIT,
            e.name == host,
            e.to_state == FOUND,
        )
        .order_by(e.seq.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    payload: Any = row.payload if isinstance(row.payload, dict) else {}
    missing = payload.get("missing")
    found = missing.get(build_id) if isinstance(missing, dict) else None
    items = tuple(str(item) for item in found) if isinstance(found, list) else ()
    return AuditNote(at=float(row.ts), missing=items)
