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

A document is data from outside, and import writes as root into a database
agents act on, so it is checked whole before anything is written
(``check_document``): its size and nesting, every value's JSON type, every
time, every field's type and length, every state change against the lifecycle
and TaskFlow machines, and every id: the logbook is the build's own (uuid =
build id), each flow's parent is that logbook, each atom's parent one of the
document's flows, and none of them may already exist in the target, so an
import can only ever add its own build and never rewrite another's rows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any, BinaryIO, cast

import sqlalchemy as sa

from spawnflow.exceptions import IllegalTransition, PersistenceError
from spawnflow.history.import_check import check_against, check_document
from spawnflow.history.import_events import Checked
from spawnflow.history.import_values import (
    EVENT_FIELDS,
    FORMAT,
    MAX_BYTES,
    MAX_DEPTH,
    ROW_FIELDS,
    VERSION,
    DuplicateBuild,
    InvalidExport,
    shown,
)
from spawnflow.persistence import lifecycle
from spawnflow.persistence import tables as t
from spawnflow.persistence.eventlog import EXTERNAL, EventLog
from spawnflow.persistence.replay import replay_events


def document(row: Any, events: Iterable[Any], schema_revision: str | None) -> dict[str, Any]:
    """The export document of one build from its ``builds`` row and its events."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "exported_at": time.time(),
        "schema_revision": schema_revision,
        "build": {name: getattr(row, name) for name in ROW_FIELDS},
        "events": [{name: getattr(e, name) for name in EVENT_FIELDS} for e in events],
    }


def dumps(doc: dict[str, Any]) -> str:
    """The document as JSON text.

    ASCII only: every control, bidi or other invisible character of a stored
    string is a ``\\uXXXX`` escape, so the document is safe to print on a terminal.
    """
    return json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=True, allow_nan=False) + "\n"


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def loads(text: str | bytes, source: str = "document") -> dict[str, Any]:
    """Parse and validate an export document; raise InvalidExport saying what is wrong."""
    if len(text) > MAX_BYTES:
        raise InvalidExport(
            f"{source} is larger than {MAX_BYTES // 2**20} MiB; not a build history export"
        )
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise InvalidExport(f"{source}: nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidExport(f"{source} is not JSON: {exc}") from None
    validate(doc, source)
    return cast(dict[str, Any], doc)  # validate refused anything but an object


def read(stream: BinaryIO, source: str) -> dict[str, Any]:
    """Read (at most MAX_BYTES + 1 bytes: a device or a huge file is not read whole),
    parse and validate a document from ``stream``."""
    data = stream.read(MAX_BYTES + 1)
    return loads(data, source)


def validate(doc: Any, source: str = "document") -> None:
    """Raise InvalidExport (one line) unless ``doc`` is a well-formed export document."""
    check_document(doc, source)


def replay_projections(conn: sa.Connection, build_id: str) -> dict[str, Any]:
    """Rebuild every projection row of one build from its events in ``conn``.

    Writes the ``builds`` row and the logbook/flow/atom rows (inserts only: a
    row another build owns is never replaced); returns the builds row.
    """
    events = conn.execute(
        sa.select(t.events).where(t.events.c.build_id == build_id).order_by(t.events.c.seq)
    )
    try:
        projections = replay_events(events)
    except (KeyError, TypeError, AttributeError, ValueError, IllegalTransition) as exc:
        raise InvalidExport(
            f"the events of build {build_id} do not replay: {shown(exc, 80)}"
        ) from None
    row = projections["builds"].get(build_id)
    if row is None or not row["instance_uuid"] or row["host"] is None:
        raise InvalidExport(f"the events of build {build_id} do not describe its creation")
    conn.execute(sa.insert(t.builds).values(**row))
    for name, table in (
        ("logbooks", t.logbooks),
        ("flowdetails", t.flowdetails),
        ("atomdetails", t.atomdetails),
    ):
        rows = projections[name]
        if rows:
            conn.execute(sa.insert(table), list(rows.values()))
    return row


# -- import -----------------------------------------------------------------------------


def import_build(eventlog: EventLog, doc: dict[str, Any], *, allow_unfinished: bool = False) -> str:
    """Load an export document into ``eventlog``'s database; return the build id.

    Open the target with ``EventLog.open(url)`` (schema check, upgrade of an
    empty database). All or nothing: the document is checked whole first, then
    one transaction checks that none of its ids exists in the target and writes.
    """
    checked = check_document(doc)
    build_id, expected = checked.build_id, checked.row
    if not allow_unfinished and not lifecycle.is_final(expected["state"]):
        raise PersistenceError(
            f"build {build_id} is {expected['state']}, not finished: an agent owning host "
            f"{shown(expected['host'])} on the target would try to recover it; import it "
            "with allow_unfinished (--allow-unfinished) only into a database no agent uses"
        )
    try:
        with eventlog.transaction() as conn:
            _refuse_taken_ids(conn, checked)
            conn.execute(
                sa.insert(t.events),
                [
                    {
                        "build_id": build_id,
                        "ts": e["ts"],
                        "kind": e["kind"],
                        "subject": e["subject"],
                        "name": e["name"],
                        "from_state": e["from_state"],
                        "to_state": e["to_state"],
                        "payload": e["payload"],
                    }
                    for e in doc["events"]
                ],
            )
            row = replay_projections(conn, build_id)
            check_against(doc["build"], row)
    except sa.exc.IntegrityError as exc:
        # Another writer added one of these ids between the check and the insert, or
        # a constraint of the target (one unfinished build per instance) refused it.
        orig = str(getattr(exc, "orig", None) or exc).strip().splitlines() or ["?"]
        raise DuplicateBuild(
            f"the target database refused build {build_id}: {orig[0]}; nothing imported"
        ) from None
    return build_id


def _chunks(values: Iterable[str], size: int = 500) -> Iterable[list[str]]:
    ordered = sorted(values)
    for start in range(0, len(ordered), size):
        yield ordered[start : start + size]


def _refuse_taken_ids(conn: sa.Connection, checked: Checked) -> None:
    """Refuse the import if any id of the document already names a row of the target."""
    build_id = checked.build_id
    existing = conn.execute(
        sa.select(t.builds.c.state, t.builds.c.host).where(t.builds.c.build_id == build_id)
    ).first()
    if existing is not None:
        raise DuplicateBuild(
            f"build {build_id} is already in the target database "
            f"({existing.state} on host {shown(existing.host)}); "
            "nothing imported"
        )
    stray = conn.execute(
        sa.select(sa.func.count()).select_from(t.events).where(t.events.c.build_id == build_id)
    ).scalar()
    if stray:
        raise DuplicateBuild(
            f"the target database already has {stray} events of build "
            f"{build_id} (but no build row); nothing imported"
        )
    e, f, a = t.events.c, t.flowdetails.c, t.atomdetails.c
    for chunk in _chunks(checked.ids):
        for table, query in (
            ("events", sa.select(e.subject).where(e.subject.in_(chunk), e.kind != EXTERNAL)),
            ("logbooks", sa.select(t.logbooks.c.uuid).where(t.logbooks.c.uuid.in_(chunk))),
            (
                "flowdetails",
                sa.select(f.uuid).where(sa.or_(f.uuid.in_(chunk), f.book_uuid.in_(chunk))),
            ),
            (
                "atomdetails",
                sa.select(a.uuid).where(
                    sa.or_(a.uuid.in_(chunk), a.flow_uuid.in_(chunk), a.book_uuid.in_(chunk))
                ),
            ),
        ):
            taken = conn.execute(query.limit(1)).scalar()
            if taken is not None:
                raise InvalidExport(
                    f"the document's ids collide with rows of another build in the target "
                    f"database ({table} has {taken}); an import may only add its own build, "
                    "nothing imported"
                )


__all__ = [
    "FORMAT",
    "MAX_BYTES",
    "VERSION",
    "Checked",
    "DuplicateBuild",
    "InvalidExport",
    "check_document",
    "document",
    "dumps",
    "import_build",
    "loads",
    "read",
    "validate",
]
