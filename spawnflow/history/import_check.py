"""Checking an export document whole before anything of it is written.

A document is data from outside, and import writes as root into a database
agents act on, so ``check_document`` checks it whole: its size and nesting,
every value's JSON type, every time, every field's type and length
(``import_values``), every state change against the lifecycle and TaskFlow
machines and every id (``import_events``): the logbook is the build's own
(uuid = build id), each flow's parent is that logbook, each atom's parent one
of the document's flows. Whether the ids are free in the target is
``export.import_build``'s check.
"""

from __future__ import annotations

from typing import Any

from spawnflow.history.import_events import Checked, EventsCheck, member
from spawnflow.history.import_values import (
    CLOCK_SLACK,
    EVENT_FIELDS,
    FORMAT,
    ID_LEN,
    KINDS,
    MAX_EVENTS,
    NAME_LEN,
    REQUIRED_EVENT_FIELDS,
    STATE_LEN,
    TOP_FIELDS,
    VERSION,
    Checker,
    InvalidExport,
    shown,
)
from spawnflow.persistence import lifecycle
from spawnflow.persistence.eventlog import BUILD


def check_document(doc: Any, source: str = "document") -> Checked:
    """Check a whole export document; return its ids and replayed projections.

    Raises InvalidExport with one line naming the first thing wrong
    (``events[12].payload: must be an object``). Reads nothing but ``doc``.
    """
    c = Checker(source)
    _check_header(c, doc)
    build, events = doc.get("build"), doc.get("events")
    if not isinstance(build, dict) or not isinstance(build.get("build_id"), str):
        raise InvalidExport(f"{source}: no build row with a build_id")
    build_id = c.uuid(build["build_id"], ("build", "build_id"))
    _check_row(c, build)
    if not isinstance(events, list) or not events:
        raise InvalidExport(f"{source}: no events")
    if len(events) > MAX_EVENTS:
        raise InvalidExport(f"{source}: more than {MAX_EVENTS} events")
    last_seq = 0
    for index, event in enumerate(events):
        last_seq = _check_event(c, event, ("events", index), build_id, last_seq)
    first = events[0]
    if (
        first["kind"] != BUILD
        or first["to_state"] != lifecycle.QUEUED
        or not isinstance((first["payload"] or {}).get("spec"), dict)
    ):
        raise InvalidExport(
            f"{source}: the first event is not the build's creation "
            "(QUEUED with its spec); the history is incomplete"
        )
    checked = EventsCheck(c, build_id).run(events)
    check_against(build, checked.row, source)
    return checked


def _check_header(c: Checker, doc: Any) -> None:
    """Format, version, top-level fields, every value's JSON type and size."""
    source = c.source
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InvalidExport(
            f'{source} is not a spawnflow build history export (no "format": "{FORMAT}")'
        )
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidExport(f"{source}: bad export version {shown(version)}")
    if version > VERSION:
        raise InvalidExport(
            f"{source} is export version {version}, newer than this "
            f"spawnflow reads ({VERSION}); upgrade spawnflow"
        )
    c.keys(doc, TOP_FIELDS, ())
    c.scan(doc)
    if doc.get("exported_at") is not None:
        c.time(doc["exported_at"], ("exported_at",))
    c.column(doc.get("schema_revision"), ("schema_revision",), 64)


def _check_event(
    c: Checker, event: Any, path: tuple[Any, ...], build_id: str, last_seq: int
) -> int:
    """One event's fields (not yet its meaning); return its ``seq``."""
    if not isinstance(event, dict):
        raise c.bad(path, "must be an object")
    missing = sorted(REQUIRED_EVENT_FIELDS - set(event))
    if missing:
        raise c.bad(path, f"no {missing[0]!r}")
    c.keys(event, set(EVENT_FIELDS) | {"build_id"}, path)
    if "build_id" in event and event["build_id"] != build_id:
        raise c.bad(path + ("build_id",), "is not the build's id; a document holds one build")
    seq = event["seq"]
    if isinstance(seq, bool) or not isinstance(seq, int) or seq <= last_seq:
        raise c.bad(
            path + ("seq",),
            f"must be an integer above the previous event's ({last_seq}), not {shown(seq)}",
        )
    c.time(event["ts"], path + ("ts",))
    if not member(event["kind"], KINDS):
        raise c.bad(
            path + ("kind",),
            f"must be one of {', '.join(sorted(KINDS))}, not {shown(event['kind'])}",
        )
    c.column(event["subject"], path + ("subject",), ID_LEN)
    c.column(event["name"], path + ("name",), NAME_LEN)
    c.column(event["from_state"], path + ("from_state",), STATE_LEN)
    c.column(event["to_state"], path + ("to_state",), STATE_LEN)
    if event["payload"] is not None and not isinstance(event["payload"], dict):
        raise c.bad(path + ("payload",), "must be an object or null")
    return seq


def _check_row(c: Checker, build: dict[str, Any]) -> None:
    """The document's ``builds`` row: typed fields (it is compared with the events later)."""
    for name in ("instance_uuid", "instance_name", "host", "state", "created_at", "updated_at"):
        if name not in build:
            raise c.bad(("build",), f"no {name!r}")
    c.column(build["instance_uuid"], ("build", "instance_uuid"), ID_LEN, required=True)
    c.column(build["instance_name"], ("build", "instance_name"), NAME_LEN, required=True)
    c.column(build["host"], ("build", "host"), NAME_LEN, required=True)
    if not member(build["state"], lifecycle.STATES):
        raise c.bad(
            ("build", "state"),
            f"must be one of {', '.join(sorted(lifecycle.STATES))}, not {shown(build['state'])}",
        )
    c.time(build["created_at"], ("build", "created_at"))
    c.time(build["updated_at"], ("build", "updated_at"))
    if "spec" in build:
        c.obj(build["spec"], ("build", "spec"))
    c.column(build.get("error"), ("build", "error"), None)
    last_seq = build.get("last_seq")
    if last_seq is not None and (isinstance(last_seq, bool) or not isinstance(last_seq, int)):
        raise c.bad(("build", "last_seq"), "must be an integer or null")


def check_against(
    exported: dict[str, Any], replayed: dict[str, Any], source: str = "document"
) -> None:
    """The document's builds row must be what its events say (else it was edited)."""
    for name in ("instance_uuid", "instance_name", "host", "state", "error"):
        if name in exported and exported[name] != replayed[name]:
            raise InvalidExport(
                f"{source}: the export's build row says {name}={shown(exported[name])} but "
                f"its events say {shown(replayed[name])}; the document is inconsistent, "
                "nothing imported"
            )
    for name in ("created_at", "updated_at"):
        value = exported.get(name)
        if isinstance(value, (int, float)) and abs(value - replayed[name]) > CLOCK_SLACK:
            raise InvalidExport(
                f"{source}: the export's build row says {name}={value} but its events say "
                f"{replayed[name]}; the document is inconsistent, nothing imported"
            )
