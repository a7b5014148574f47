"""Export one build's history as a self-contained JSON document; import it elsewhere.

The document carries every event of the build (in log order, with its time
and payload, already redacted when it was written) and, for reference, the
build's ``builds`` row:

    {"format": "spawnflow-build-history", "version": 1,
     "exported_at": 1716200000.0, "schema_revision": "0001",
     "build": {"build_id": ..., "state": "ROLLED_BACK", ...},
     "events": [{"seq": 1, "ts": ..., "kind": "build", "subject": ..., "name": ...,
                 "from_state": null, "to_state": "QUEUED", "payload": {...}}, ...]}

Import appends the events to the target log (new sequence numbers, original
times) and rebuilds the projections from them: the ``builds`` row and the
TaskFlow logbook/flow/atom rows are replayed from the events alone, then the
replayed row is checked against the document's. The target must be a spawnflow
database (an empty one is upgraded first; a foreign or newer one is refused).
A build already present is refused, so is an unfinished build unless asked
(an agent owning its host would try to recover it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa

from spawnflow.exceptions import PersistenceError
from spawnflow.persistence import lifecycle
from spawnflow.persistence import tables as t
from spawnflow.persistence.eventlog import BUILD, EventLog
from spawnflow.persistence.replay import replay_events

FORMAT = "spawnflow-build-history"
VERSION = 1
_EVENT_FIELDS = ("seq", "ts", "kind", "subject", "name", "from_state", "to_state", "payload")
_ROW_FIELDS = ("build_id", "instance_uuid", "instance_name", "host", "state", "created_at",
               "updated_at", "spec", "error", "last_seq")
# Replayed created_at comes from the QUEUED event's time, which the log takes a
# moment before it fills the builds row.
_CLOCK_SLACK = 5.0


class InvalidExport(PersistenceError):
    """The file is not a (complete, readable) spawnflow build history export."""


class DuplicateBuild(PersistenceError):
    """The target database already holds this build; nothing was imported."""


def document(row: Any, events: Iterable[Any], schema_revision: str | None) -> dict[str, Any]:
    """The export document of one build from its ``builds`` row and its events."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "exported_at": time.time(),
        "schema_revision": schema_revision,
        "build": {name: getattr(row, name) for name in _ROW_FIELDS},
        "events": [{name: getattr(e, name) for name in _EVENT_FIELDS} for e in events],
    }


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def loads(text: str | bytes, source: str = "document") -> dict[str, Any]:
    """Parse and validate an export document; raise InvalidExport saying what is wrong."""
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidExport(f"{source} is not JSON: {exc}") from None
    validate(doc, source)
    return doc


def validate(doc: Any, source: str = "document") -> None:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InvalidExport(f"{source} is not a spawnflow build history export "
                            f"(no \"format\": \"{FORMAT}\")")
    version = doc.get("version")
    if not isinstance(version, int) or version < 1:
        raise InvalidExport(f"{source}: bad export version {version!r}")
    if version > VERSION:
        raise InvalidExport(f"{source} is export version {version}, newer than this "
                            f"spawnflow reads ({VERSION}); upgrade spawnflow")
    build, events = doc.get("build"), doc.get("events")
    if not isinstance(build, dict) or not isinstance(build.get("build_id"), str):
        raise InvalidExport(f"{source}: no build row with a build_id")
    if not isinstance(events, list) or not events:
        raise InvalidExport(f"{source}: no events")
    for index, event in enumerate(events):
        if not isinstance(event, dict) or not isinstance(event.get("ts"), (int, float)) \
                or not isinstance(event.get("kind"), str):
            raise InvalidExport(f"{source}: event #{index} lacks a time or a kind")
    first = events[0]
    if first["kind"] != BUILD or first.get("to_state") != lifecycle.QUEUED \
            or not isinstance((first.get("payload") or {}).get("spec"), dict):
        raise InvalidExport(f"{source}: the first event is not the build's creation "
                            "(QUEUED with its spec); the history is incomplete")


def replay_build_row(build_id: str, events: Iterable[Any]) -> dict[str, Any]:
    """The ``builds`` row the build's events (rows or dicts, seq order) describe."""
    rows = [SimpleNamespace(**{"build_id": build_id, "seq": None, "payload": None, **e})
            if isinstance(e, dict) else e for e in events]
    try:
        row = replay_events(r for r in rows if r.kind == BUILD)["builds"].get(build_id)
    except (KeyError, TypeError) as exc:
        raise InvalidExport(f"the events of build {build_id} are malformed: {exc}") from None
    if row is None or not row["instance_uuid"] or row["host"] is None:
        raise InvalidExport(f"the events of build {build_id} do not describe its creation")
    return row


def replay_projections(conn: sa.Connection, build_id: str) -> dict[str, Any]:
    """Rebuild every projection row of one build from its events in ``conn``.

    Writes the ``builds`` row and the logbook/flow/atom rows; returns the builds row.
    """
    events = conn.execute(sa.select(t.events).where(t.events.c.build_id == build_id)
                          .order_by(t.events.c.seq))
    projections = replay_events(events)
    row = projections["builds"].get(build_id)
    if row is None or not row["instance_uuid"] or row["host"] is None:
        raise InvalidExport(f"the events of build {build_id} do not describe its creation")
    conn.execute(sa.delete(t.builds).where(t.builds.c.build_id == build_id))
    conn.execute(sa.insert(t.builds).values(**row))
    for name, table in (("logbooks", t.logbooks), ("flowdetails", t.flowdetails),
                        ("atomdetails", t.atomdetails)):
        rows = projections[name]
        if rows:
            conn.execute(sa.delete(table).where(table.c.uuid.in_(list(rows))))
            conn.execute(sa.insert(table), list(rows.values()))
    return row


# -- import -----------------------------------------------------------------------------


def import_build(eventlog: EventLog, doc: dict[str, Any], *,
                 allow_unfinished: bool = False) -> str:
    """Load an export document into ``eventlog``'s database; return the build id.

    Open the target with ``EventLog.open(url)`` (schema check, upgrade of an
    empty database). All or nothing: one transaction.
    """
    validate(doc)
    build = doc["build"]
    build_id = build["build_id"]
    expected = replay_build_row(build_id, doc["events"])  # checks the lifecycle too
    if not allow_unfinished and not lifecycle.is_final(expected["state"]):
        raise PersistenceError(
            f"build {build_id} is {expected['state']}, not finished: an agent owning host "
            f"{expected['host']} on the target would try to recover it; import it with "
            "allow_unfinished (--allow-unfinished) only into a database no agent uses")
    with eventlog.transaction() as conn:
        existing = conn.execute(sa.select(t.builds.c.state, t.builds.c.host)
                                .where(t.builds.c.build_id == build_id)).first()
        if existing is not None:
            raise DuplicateBuild(f"build {build_id} is already in the target database "
                                 f"({existing.state} on host {existing.host}); nothing imported")
        stray = conn.execute(sa.select(sa.func.count()).select_from(t.events)
                             .where(t.events.c.build_id == build_id)).scalar()
        if stray:
            raise DuplicateBuild(f"the target database already has {stray} events of build "
                                 f"{build_id} (but no build row); nothing imported")
        conn.execute(sa.insert(t.events), [
            {"build_id": build_id, "ts": e["ts"], "kind": e["kind"],
             "subject": e.get("subject"), "name": e.get("name"),
             "from_state": e.get("from_state"), "to_state": e.get("to_state"),
             "payload": e.get("payload")} for e in doc["events"]])
        row = replay_projections(conn, build_id)
        _check_against(build, row)
    return build_id


def _check_against(exported: dict[str, Any], replayed: dict[str, Any]) -> None:
    """The document's builds row must be what its events say (else it was edited)."""
    for name in ("instance_uuid", "instance_name", "host", "state", "error"):
        if name in exported and exported[name] != replayed[name]:
            raise InvalidExport(
                f"the export's build row says {name}={exported[name]!r} but its events say "
                f"{replayed[name]!r}; the document is inconsistent, nothing imported")
    for name in ("created_at", "updated_at"):
        value = exported.get(name)
        if isinstance(value, (int, float)) and abs(value - replayed[name]) > _CLOCK_SLACK:
            raise InvalidExport(
                f"the export's build row says {name}={value} but its events say "
                f"{replayed[name]}; the document is inconsistent, nothing imported")
