"""Rebuild every projection from the events alone.

The projections (builds, logbooks, flowdetails, atomdetails) are a cache of
the log: ``replay`` computes what they must contain, ``rebuild`` rewrites them,
and ``current`` reads them, so a test (or an operator who suspects damage) can
prove ``replay(...) == current(...)``.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from spawnflow.persistence import tables as t
from spawnflow.persistence.eventlog import ATOM, BUILD, FLOW, LOGBOOK, EventLog

Projections = dict[str, dict[str, dict[str, Any]]]
_TABLES = {"builds": t.builds, "logbooks": t.logbooks, "flowdetails": t.flowdetails,
           "atomdetails": t.atomdetails}
_KEYS = {"builds": "build_id", "logbooks": "uuid", "flowdetails": "uuid", "atomdetails": "uuid"}


def _apply_doc(old: dict[str, Any] | None, payload: dict[str, Any]) -> dict[str, Any]:
    doc = dict(old or {})
    doc.update(payload.get("set", {}))
    for key in payload.get("unset", []):
        doc.pop(key, None)
    return doc


def _build_event(builds: dict[str, dict[str, Any]], event: Any) -> None:
    payload = event.payload or {}
    if event.from_state is None:
        builds[event.build_id] = {
            "build_id": event.build_id, "instance_uuid": payload["instance_uuid"],
            "instance_name": event.name, "host": payload["host"], "state": event.to_state,
            "created_at": event.ts, "updated_at": event.ts, "spec": payload["spec"],
            "error": None, "last_seq": event.seq}
        return
    row = builds[event.build_id]
    row.update(state=event.to_state, updated_at=event.ts, last_seq=event.seq)
    if "error" in payload:
        row["error"] = payload["error"]


def _drop_book(result: Projections, book_uuid: str) -> None:
    result["logbooks"].pop(book_uuid, None)
    for table in ("flowdetails", "atomdetails"):
        for uuid in [u for u, r in result[table].items() if r["book_uuid"] == book_uuid]:
            del result[table][uuid]


def replay(log: EventLog) -> Projections:
    """The projections as the events say they must be."""
    result: Projections = {name: {} for name in _TABLES}
    with log.engine.connect() as conn:
        events = conn.execute(sa.select(t.events).order_by(t.events.c.seq))
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
                    old = result["logbooks"].get(event.subject, {}).get("doc")
                    doc = _apply_doc(old, payload)
                    result["logbooks"][event.subject] = {"uuid": event.subject,
                                                         "name": doc.get("name"), "doc": doc}
            elif event.kind == FLOW:
                old = result["flowdetails"].get(event.subject)
                doc = _apply_doc(old and old["doc"], payload)
                result["flowdetails"][event.subject] = {
                    "uuid": event.subject, "book_uuid": old["book_uuid"] if old
                    else payload["parent"], "name": doc.get("name"), "state": doc.get("state"),
                    "doc": doc}
            elif event.kind == ATOM:
                old = result["atomdetails"].get(event.subject)
                doc = _apply_doc(old and old["doc"], payload)
                result["atomdetails"][event.subject] = {
                    "uuid": event.subject,
                    "flow_uuid": old["flow_uuid"] if old else payload["parent"],
                    "book_uuid": event.build_id,
                    "name": doc.get("name"),
                    "atom_type": old["atom_type"] if old else payload["type"],
                    "state": doc.get("state"), "intention": doc.get("intention"), "doc": doc}
    return result


def current(log: EventLog) -> Projections:
    """The projections as stored."""
    result: Projections = {}
    with log.engine.connect() as conn:
        for name, table in _TABLES.items():
            key = _KEYS[name]
            result[name] = {row[key]: dict(row) for row in
                            (r._mapping for r in conn.execute(sa.select(table)))}
    return result


def rebuild(log: EventLog) -> Projections:
    """Rewrite every projection from the events, in one transaction."""
    log.flush(all_builds=True)
    projections = replay(log)
    with log.transaction() as conn:
        for name, table in _TABLES.items():
            conn.execute(sa.delete(table))
            rows = list(projections[name].values())
            if rows:
                conn.execute(sa.insert(table), rows)
    return projections
