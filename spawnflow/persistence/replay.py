"""Rebuild every projection from the events alone.

The projections (builds, logbooks, flowdetails, atomdetails) are a cache of
the log: ``replay`` computes what they must contain, ``rebuild`` rewrites them,
and ``current`` reads them, so a test (or an operator who suspects damage) can
prove ``replay(...) == current(...)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from spawnflow.persistence import lifecycle
from spawnflow.persistence import tables as t
from spawnflow.persistence.eventlog import ATOM, BUILD, FLOW, LOGBOOK, EventLog

Projections = dict[str, dict[str, dict[str, Any]]]
_TABLES = {
    "builds": t.builds,
    "logbooks": t.logbooks,
    "flowdetails": t.flowdetails,
    "atomdetails": t.atomdetails,
}
_KEYS = {"builds": "build_id", "logbooks": "uuid", "flowdetails": "uuid", "atomdetails": "uuid"}


def _apply_doc(old: dict[str, Any] | None, payload: dict[str, Any]) -> dict[str, Any]:
    """The ``doc`` of projected row ``old`` (None: a new row) after the event's set/unset."""
    doc = dict(old["doc"] if old else {})
    doc.update(payload.get("set", {}))
    for key in payload.get("unset", []):
        doc.pop(key, None)
    return doc


def _build_event(builds: dict[str, dict[str, Any]], event: Any) -> None:
    """Apply one build event; an illegal lifecycle transition raises IllegalTransition."""
    payload = event.payload or {}
    row = builds.get(event.build_id)
    kind = row["kind"] if row else payload.get("kind", lifecycle.SPAWN)
    lifecycle.check(row["state"] if row else None, event.to_state, kind)
    if row is None:
        spec = payload.get("spec") or {}
        builds[event.build_id] = {
            "build_id": event.build_id,
            "instance_uuid": payload.get("instance_uuid")
            or (spec.get("instance") or {}).get("uuid"),
            "instance_name": event.name,
            "host": payload.get("host"),
            "state": event.to_state,
            "created_at": event.ts,
            "updated_at": event.ts,
            "spec": spec,
            "error": None,
            "last_seq": event.seq,
            # Only what create_build writes (a short string): an imported log
            # may carry anything here.
            "flow_version": version
            if isinstance(version := payload.get("flow_version"), str) and len(version) <= 64
            else None,
            "kind": kind,
        }
        return
    row.update(state=event.to_state, updated_at=event.ts, last_seq=event.seq)
    if "error" in payload:
        row["error"] = payload["error"]


def _drop_book(result: Projections, book_uuid: str) -> None:
    result["logbooks"].pop(book_uuid, None)
    for table in ("flowdetails", "atomdetails"):
        for uuid in [u for u, r in result[table].items() if r["book_uuid"] == book_uuid]:
            del result[table][uuid]


def replay_events(events: Iterable[Any]) -> Projections:
    """The projections that ``events`` (rows with the events columns, in seq order) say."""
    result: Projections = {name: {} for name in _TABLES}
    for event in events:
        payload = event.payload or {}
        if event.kind == BUILD:
            _build_event(result["builds"], event)
        elif event.kind == LOGBOOK:
            if event.to_state == "CLEARED":
                for table in ("logbooks", "flowdetails", "atomdetails"):
                    result[table].clear()
            elif event.to_state == "DESTROYED":
                _drop_book(result, event.subject)
            else:
                doc = _apply_doc(result["logbooks"].get(event.subject), payload)
                result["logbooks"][event.subject] = {
                    "uuid": event.subject,
                    "name": doc.get("name"),
                    "doc": doc,
                }
        elif event.kind == FLOW:
            old = result["flowdetails"].get(event.subject)
            doc = _apply_doc(old, payload)
            result["flowdetails"][event.subject] = {
                "uuid": event.subject,
                "book_uuid": old["book_uuid"] if old else payload["parent"],
                "name": doc.get("name"),
                "state": doc.get("state"),
                "doc": doc,
            }
        elif event.kind == ATOM:
            old = result["atomdetails"].get(event.subject)
            doc = _apply_doc(old, payload)
            result["atomdetails"][event.subject] = {
                "uuid": event.subject,
                "flow_uuid": old["flow_uuid"] if old else payload["parent"],
                "book_uuid": event.build_id,
                "name": doc.get("name"),
                "atom_type": old["atom_type"] if old else payload["type"],
                "state": doc.get("state"),
                "intention": doc.get("intention"),
                "doc": doc,
            }
    return result


def replay(log: EventLog, build_id: str | None = None) -> Projections:
    """The projections as the events say they must be (of one build, or of all)."""
    query = sa.select(t.events).order_by(t.events.c.seq)
    if build_id is not None:
        query = query.where(t.events.c.build_id == build_id)
    with log.engine.connect() as conn:
        return replay_events(conn.execute(query))


def current(log: EventLog) -> Projections:
    """The projections as stored."""
    result: Projections = {}
    with log.engine.connect() as conn:
        for name, table in _TABLES.items():
            key = _KEYS[name]
            result[name] = {
                row[key]: dict(row) for row in (r._mapping for r in conn.execute(sa.select(table)))
            }
    return result


def rebuild(log: EventLog) -> Projections:
    """Rewrite every projection from the events, in one transaction."""
    log.flush(all_builds=True)
    with log.transaction() as conn:
        # Read inside the write transaction: no event can land in between.
        projections = replay_events(conn.execute(sa.select(t.events).order_by(t.events.c.seq)))
        for name, table in _TABLES.items():
            conn.execute(sa.delete(table))
            rows = list(projections[name].values())
            if rows:
                conn.execute(sa.insert(table), rows)
    return projections
