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
import math
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, BinaryIO

import sqlalchemy as sa
from taskflow import states as tf_states
from taskflow.persistence import models

from spawnflow.exceptions import IllegalTransition, PersistenceError
from spawnflow.persistence import lifecycle
from spawnflow.persistence import tables as t
from spawnflow.persistence.backend import check_atom_transition, check_flow_transition
from spawnflow.persistence.eventlog import ATOM, BUILD, EXTERNAL, FLOW, LOGBOOK, EventLog
from spawnflow.persistence.replay import Projections, replay_events

FORMAT = "spawnflow-build-history"
VERSION = 1
_EVENT_FIELDS = ("seq", "ts", "kind", "subject", "name", "from_state", "to_state", "payload")
# What a version 1 event must carry; ``build_id`` may be there too (it must be the build's).
_REQUIRED_EVENT_FIELDS = frozenset(
    ("seq", "ts", "kind", "subject", "name", "from_state", "to_state", "payload")
)
_ROW_FIELDS = (
    "build_id",
    "instance_uuid",
    "instance_name",
    "host",
    "state",
    "created_at",
    "updated_at",
    "spec",
    "error",
    "last_seq",
)
_TOP_FIELDS = frozenset(("format", "version", "exported_at", "schema_revision", "build", "events"))
# Replayed created_at comes from the QUEUED event's time, which the log takes a
# moment before it fills the builds row.
_CLOCK_SLACK = 5.0

# Bounds of a document. A real build exports to ~100 KiB and ~100 events; one
# resumed many times stays far below these. The depth covers specs, results
# and failures with their causes (under 15 levels in practice).
MAX_BYTES = 64 * 1024 * 1024
MAX_EVENTS = 100_000
MAX_DEPTH = 64
# Times: 2000-01-01T00:00:00Z .. 9999-12-31T23:59:59Z. Nothing spawnflow wrote
# is older; nothing later can be shown as a date.
EARLIEST = 946684800.0
LATEST = 253402300799.0
_INT_LIMIT = 2**63  # every integer fits a signed 64-bit column
# Column widths (tables.py): PostgreSQL refuses longer text, SQLite would keep it.
_ID_LEN, _NAME_LEN, _STATE_LEN = 36, 255, 32

_KINDS = frozenset((BUILD, LOGBOOK, FLOW, ATOM, EXTERNAL))
_FLOW_STATES = frozenset(
    (
        tf_states.PENDING,
        tf_states.RUNNING,
        tf_states.SUCCESS,
        tf_states.FAILURE,
        tf_states.REVERTED,
        tf_states.SUSPENDING,
        tf_states.SUSPENDED,
        tf_states.RESUMING,
    )
)
_ATOM_STATES = frozenset(
    (
        tf_states.PENDING,
        tf_states.RUNNING,
        tf_states.SUCCESS,
        tf_states.FAILURE,
        tf_states.REVERTING,
        tf_states.REVERTED,
        tf_states.REVERT_FAILURE,
        tf_states.IGNORE,
        tf_states.RETRYING,
    )
)
_ATOM_TYPES = frozenset(models.ATOM_TYPES)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")


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
    return doc


def read(stream: BinaryIO, source: str) -> dict[str, Any]:
    """Read (at most MAX_BYTES + 1 bytes: a device or a huge file is not read whole),
    parse and validate a document from ``stream``."""
    data = stream.read(MAX_BYTES + 1)
    return loads(data, source)


def validate(doc: Any, source: str = "document") -> None:
    """Raise InvalidExport (one line) unless ``doc`` is a well-formed export document."""
    check_document(doc, source)


# -- checking a document ------------------------------------------------------------------


@dataclass
class Checked:
    """A document found well-formed: its ids and the projections its events replay to."""

    build_id: str
    flows: set[str]
    atoms: set[str]
    projections: Projections

    @property
    def row(self) -> dict[str, Any]:
        return self.projections["builds"][self.build_id]

    @property
    def ids(self) -> set[str]:
        """Every row id the build will own: build (= logbook), flows, atoms."""
        return {self.build_id} | self.flows | self.atoms


def _where(path: tuple[Any, ...]) -> str:
    """``events[12].payload.set`` from ('events', 12, 'payload', 'set')."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENTIFIER.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{_shown(part)}]"
    return out or "document"


def _shown(value: Any, limit: int = 40) -> str:
    """A value for an error message: repr (escapes controls and bidi), shortened."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Checker:
    """Type and range checks of a document's values; each refusal names the path."""

    def __init__(self, source: str):
        self.source = source

    def bad(self, path: tuple[Any, ...], text: str) -> InvalidExport:
        return InvalidExport(f"{self.source}: {_where(path)}: {text}")

    # -- any value ------------------------------------------------------------------

    def scan(self, doc: Any) -> None:
        """JSON types only, finite numbers, UTF-8 text, nesting within MAX_DEPTH.

        Iterative: a document nested 100,000 deep is refused, not a RecursionError.
        """
        stack: list[tuple[Any, tuple[Any, ...]]] = [(doc, ())]
        while stack:
            value, path = stack.pop()
            if isinstance(value, (dict, list)):
                if len(path) >= MAX_DEPTH:
                    raise self.bad(path[:3], f"nested deeper than {MAX_DEPTH} levels")
                if isinstance(value, dict):
                    for key, item in value.items():
                        if not isinstance(key, str):
                            raise self.bad(path, f"key {_shown(key)} is not a string")
                        self.text(key, path)
                        stack.append((item, path + (key,)))
                else:
                    stack.extend((item, path + (i,)) for i, item in enumerate(value))
            elif isinstance(value, str):
                self.text(value, path)
            elif value is None or isinstance(value, bool):
                continue
            elif isinstance(value, int):
                if not -_INT_LIMIT <= value < _INT_LIMIT:
                    raise self.bad(path, "integer out of the 64-bit range")
            elif isinstance(value, float):
                if not math.isfinite(value):
                    raise self.bad(path, f"must be a finite number, not {value!r}")
            else:
                raise self.bad(path, f"a {type(value).__name__} is not a JSON value")

    def text(self, value: str, path: tuple[Any, ...]) -> None:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise self.bad(path, "text with a lone surrogate is not UTF-8") from None

    # -- typed fields ---------------------------------------------------------------

    def time(self, value: Any, path: tuple[Any, ...]) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not EARLIEST <= value <= LATEST
        ):
            raise self.bad(
                path,
                "must be a time in POSIX seconds between 2000-01-01 and "
                f"9999-12-31, not {_shown(value)}",
            )
        return float(value)

    def column(
        self,
        value: Any,
        path: tuple[Any, ...],
        limit: int | None,
        *,
        required: bool = False,
        empty: bool = True,
    ) -> str | None:
        """A text column: str (or None unless required), at most ``limit`` characters."""
        if value is None and not required:
            return None
        if not isinstance(value, str):
            raise self.bad(
                path, f"must be {'text' if required else 'text or null'}, not {_shown(value)}"
            )
        if not value and not empty:
            raise self.bad(path, "must not be empty")
        if limit is not None and len(value) > limit:
            raise self.bad(path, f"longer than {limit} characters")
        if "\x00" in value:
            raise self.bad(path, "contains a NUL character")
        return value

    def uuid(self, value: Any, path: tuple[Any, ...]) -> str:
        try:
            ok = isinstance(value, str) and str(uuid.UUID(value)) == value
        except ValueError:
            ok = False
        if not ok:
            raise self.bad(path, f"must be a lowercase UUID, not {_shown(value)}")
        return value

    def obj(self, value: Any, path: tuple[Any, ...], *, null: bool = False) -> dict[str, Any]:
        if value is None and null:
            return {}
        if not isinstance(value, dict):
            raise self.bad(path, "must be an object" + (" or null" if null else ""))
        return value

    def keys(self, value: dict[str, Any], allowed: Iterable[str], path: tuple[Any, ...]) -> None:
        unknown = sorted(set(value) - set(allowed))
        if unknown:
            raise self.bad(path, f"unknown field {_shown(unknown[0])}")

    def changes(self, payload: dict[str, Any], path: tuple[Any, ...]) -> tuple[dict, list]:
        """The ``set`` object and ``unset`` list of a logbook/flow/atom payload."""
        changed = self.obj(payload.get("set"), path + ("set",), null=True)
        unset = payload.get("unset", [])
        if not isinstance(unset, list) or not all(isinstance(k, str) for k in unset):
            raise self.bad(path + ("unset",), "must be a list of field names")
        return changed, unset


def check_document(doc: Any, source: str = "document") -> Checked:
    """Check a whole export document; return its ids and replayed projections.

    Raises InvalidExport with one line naming the first thing wrong
    (``events[12].payload: must be an object``). Reads nothing but ``doc``.
    """
    c = _Checker(source)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InvalidExport(
            f'{source} is not a spawnflow build history export (no "format": "{FORMAT}")'
        )
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidExport(f"{source}: bad export version {_shown(version)}")
    if version > VERSION:
        raise InvalidExport(
            f"{source} is export version {version}, newer than this "
            f"spawnflow reads ({VERSION}); upgrade spawnflow"
        )
    c.keys(doc, _TOP_FIELDS, ())
    c.scan(doc)
    if doc.get("exported_at") is not None:
        c.time(doc["exported_at"], ("exported_at",))
    c.column(doc.get("schema_revision"), ("schema_revision",), 64)
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
        path = ("events", index)
        if not isinstance(event, dict):
            raise c.bad(path, "must be an object")
        missing = sorted(_REQUIRED_EVENT_FIELDS - set(event))
        if missing:
            raise c.bad(path, f"no {missing[0]!r}")
        c.keys(event, set(_EVENT_FIELDS) | {"build_id"}, path)
        if "build_id" in event and event["build_id"] != build_id:
            raise c.bad(path + ("build_id",), "is not the build's id; a document holds one build")
        seq = event["seq"]
        if isinstance(seq, bool) or not isinstance(seq, int) or seq <= last_seq:
            raise c.bad(
                path + ("seq",),
                f"must be an integer above the previous event's ({last_seq}), not {_shown(seq)}",
            )
        last_seq = seq
        c.time(event["ts"], path + ("ts",))
        if not _member(event["kind"], _KINDS):
            raise c.bad(
                path + ("kind",),
                f"must be one of {', '.join(sorted(_KINDS))}, not {_shown(event['kind'])}",
            )
        c.column(event["subject"], path + ("subject",), _ID_LEN)
        c.column(event["name"], path + ("name",), _NAME_LEN)
        c.column(event["from_state"], path + ("from_state",), _STATE_LEN)
        c.column(event["to_state"], path + ("to_state",), _STATE_LEN)
        if event["payload"] is not None and not isinstance(event["payload"], dict):
            raise c.bad(path + ("payload",), "must be an object or null")
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
    checked = _Fold(c, build_id).run(events)
    _check_against(build, checked.row, source)
    return checked


def _check_row(c: _Checker, build: dict[str, Any]) -> None:
    """The document's ``builds`` row: typed fields (it is compared with the events later)."""
    for name in ("instance_uuid", "instance_name", "host", "state", "created_at", "updated_at"):
        if name not in build:
            raise c.bad(("build",), f"no {name!r}")
    c.column(build["instance_uuid"], ("build", "instance_uuid"), _ID_LEN, required=True)
    c.column(build["instance_name"], ("build", "instance_name"), _NAME_LEN, required=True)
    c.column(build["host"], ("build", "host"), _NAME_LEN, required=True)
    if not _member(build["state"], lifecycle.STATES):
        raise c.bad(
            ("build", "state"),
            f"must be one of {', '.join(sorted(lifecycle.STATES))}, not {_shown(build['state'])}",
        )
    c.time(build["created_at"], ("build", "created_at"))
    c.time(build["updated_at"], ("build", "updated_at"))
    if "spec" in build:
        c.obj(build["spec"], ("build", "spec"))
    c.column(build.get("error"), ("build", "error"), None)
    last_seq = build.get("last_seq")
    if last_seq is not None and (isinstance(last_seq, bool) or not isinstance(last_seq, int)):
        raise c.bad(("build", "last_seq"), "must be an integer or null")


class _Fold:
    """Walks a document's events in order, as replay will, checking each change."""

    def __init__(self, c: _Checker, build_id: str):
        self.c, self.build_id = c, build_id
        self.state: str | None = None  # the build's lifecycle state so far
        self.book: dict[str, Any] | None = None
        self.flows: dict[str, dict[str, Any]] = {}  # uuid -> doc
        self.atoms: dict[str, dict[str, Any]] = {}  # uuid -> doc
        self.atom_of: dict[str, tuple[str, str]] = {}  # uuid -> (type, flow uuid)

    def run(self, events: list[dict[str, Any]]) -> Checked:
        for index, event in enumerate(events):
            path = ("events", index)
            kind = event["kind"]
            if kind == BUILD:
                self.build(event, path)
            elif kind == LOGBOOK:
                self.logbook(event, path)
            elif kind == FLOW:
                self.flow(event, path)
            elif kind == ATOM:
                self.atom(event, path)
            else:
                self.external(event, path)
        projections = self.replay(events)
        return Checked(self.build_id, set(self.flows), set(self.atoms), projections)

    def _transition(self, event: dict[str, Any], old: str | None, path: tuple[Any, ...]) -> None:
        if event["from_state"] != old:
            raise self.c.bad(
                path + ("from_state",),
                f"says {_shown(event['from_state'])} but the state was {_shown(old)}",
            )

    def build(self, event: dict[str, Any], path: tuple[Any, ...]) -> None:
        c = self.c
        if event["subject"] != self.build_id:
            raise c.bad(path + ("subject",), "a build event's subject must be the build id")
        c.column(event["name"], path + ("name",), _NAME_LEN, required=True)
        try:
            lifecycle.check(self.state, event["to_state"])
        except IllegalTransition as exc:
            raise c.bad(path, str(exc)) from None
        self._transition(event, self.state, path)
        payload = event["payload"] or {}
        if self.state is None:
            c.column(
                payload.get("host"),
                path + ("payload", "host"),
                _NAME_LEN,
                required=True,
                empty=False,
            )
            instance = payload.get("instance_uuid")
            where = path + ("payload", "instance_uuid")
            if instance is None:
                spec_instance = payload["spec"].get("instance")
                where = path + ("payload", "spec", "instance")
                instance = spec_instance.get("uuid") if isinstance(spec_instance, dict) else None
            c.column(instance, where, _ID_LEN, required=True, empty=False)
        if "error" in payload:
            c.column(payload["error"], path + ("payload", "error"), None)
        self.state = event["to_state"]

    def logbook(self, event: dict[str, Any], path: tuple[Any, ...]) -> None:
        c = self.c
        if event["subject"] != self.build_id:
            raise c.bad(path + ("subject",), "the logbook of a build has the build's id")
        if event["to_state"] is not None or event["from_state"] is not None:
            # CLEARED (every logbook of a database) or DESTROYED: never part of an export.
            raise c.bad(
                path + ("to_state",), f"logbook {_shown(event['to_state'])} cannot be imported"
            )
        payload = c.obj(event["payload"], path + ("payload",))
        c.keys(payload, ("set", "unset"), path + ("payload",))
        changed, unset = c.changes(payload, path + ("payload",))
        self.book = _applied(self.book, changed, unset)
        self._doc_fields(self.book, path, ("name", "uuid"))

    def flow(self, event: dict[str, Any], path: tuple[Any, ...]) -> None:
        c = self.c
        subject = c.uuid(event["subject"], path + ("subject",))
        if subject == self.build_id or subject in self.atoms:
            raise c.bad(path + ("subject",), "a flow's id must be its own")
        payload = c.obj(event["payload"], path + ("payload",))
        c.keys(payload, ("parent", "set", "unset"), path + ("payload",))
        new = subject not in self.flows
        if new and self.book is None:
            raise c.bad(path, "a flow before the build's logbook")
        if (new or "parent" in payload) and payload.get("parent") != self.build_id:
            raise c.bad(
                path + ("payload", "parent"),
                "a flow's parent must be the build's logbook (the build id)",
            )
        changed, unset = c.changes(payload, path + ("payload",))
        old = self.flows.get(subject)
        doc = _applied(old, changed, unset)
        self._doc_fields(doc, path, ("name", "uuid"), subject)
        state = doc.get("state")
        if state is not None and not _member(state, _FLOW_STATES):
            raise c.bad(
                path + ("payload", "set", "state"), f"{_shown(state)} is not a TaskFlow flow state"
            )
        old_state = old.get("state") if old else None
        try:
            check_flow_transition(old_state, state)
        except IllegalTransition as exc:
            raise c.bad(path, str(exc)) from None
        self._states(event, old_state, state, path)
        self.flows[subject] = doc

    def atom(self, event: dict[str, Any], path: tuple[Any, ...]) -> None:
        c = self.c
        subject = c.uuid(event["subject"], path + ("subject",))
        if subject == self.build_id or subject in self.flows:
            raise c.bad(path + ("subject",), "an atom's id must be its own")
        payload = c.obj(event["payload"], path + ("payload",))
        c.keys(payload, ("parent", "type", "set", "unset"), path + ("payload",))
        known = self.atom_of.get(subject)
        if known is None:
            if not _member(payload.get("parent"), self.flows):
                raise c.bad(
                    path + ("payload", "parent"),
                    "an atom's parent must be one of this build's flows (created before it)",
                )
            if not _member(payload.get("type"), _ATOM_TYPES):
                raise c.bad(
                    path + ("payload", "type"), f"must be one of {', '.join(sorted(_ATOM_TYPES))}"
                )
            known = self.atom_of[subject] = (payload["type"], payload["parent"])
        for field, value in zip(("type", "parent"), known, strict=True):
            if field in payload and payload[field] != value:
                raise c.bad(
                    path + ("payload", field),
                    f"differs from the atom's first event ({_shown(value)})",
                )
        changed, unset = c.changes(payload, path + ("payload",))
        old = self.atoms.get(subject)
        doc = _applied(old, changed, unset)
        self._doc_fields(doc, path, ("name", "uuid"), subject)
        state = doc.get("state")
        if state is not None and not _member(state, _ATOM_STATES):
            raise c.bad(
                path + ("payload", "set", "state"), f"{_shown(state)} is not a TaskFlow atom state"
            )
        intention = doc.get("intention")
        if intention is not None and not _member(intention, tf_states.INTENTIONS):
            raise c.bad(
                path + ("payload", "set", "intention"),
                f"{_shown(intention)} is not a TaskFlow intention",
            )
        for field in ("meta", "failure", "revert_failure"):
            if doc.get(field) is not None and not isinstance(doc[field], dict):
                raise c.bad(path + ("payload", "set", field), "must be an object or null")
        old_state = old.get("state") if old else None
        try:
            check_atom_transition(known[0], old_state, state)
        except IllegalTransition as exc:
            raise c.bad(path, str(exc)) from None
        self._states(event, old_state, state, path)
        self.atoms[subject] = doc

    def external(self, event: dict[str, Any], path: tuple[Any, ...]) -> None:
        c = self.c
        c.column(event["subject"], path + ("subject",), _ID_LEN, required=True, empty=False)
        c.column(event["name"], path + ("name",), _NAME_LEN, required=True, empty=False)
        c.column(event["to_state"], path + ("to_state",), _STATE_LEN, required=True, empty=False)
        if event["from_state"] is not None:
            raise c.bad(path + ("from_state",), "an external event has no from_state")

    def _states(
        self, event: dict[str, Any], old: str | None, new: str | None, path: tuple[Any, ...]
    ) -> None:
        """The event's from/to columns must say what its doc change does (history shows them)."""
        self._transition(event, old, path)
        if event["to_state"] != new:
            raise self.c.bad(
                path + ("to_state",),
                f"says {_shown(event['to_state'])} but the change makes it {_shown(new)}",
            )

    def _doc_fields(
        self,
        doc: dict[str, Any],
        path: tuple[Any, ...],
        fields: Iterable[str],
        subject: str | None = None,
    ) -> None:
        where = path + ("payload", "set")
        if "name" in fields:
            self.c.column(doc.get("name"), where + ("name",), _NAME_LEN)
        own = subject or self.build_id
        if "uuid" in fields and doc.get("uuid", own) != own:
            raise self.c.bad(where + ("uuid",), "is not the id the event is about")
        if doc.get("meta") is not None and not isinstance(doc["meta"], dict):
            raise self.c.bad(where + ("meta",), "must be an object or null")

    def replay(self, events: list[dict[str, Any]]) -> Projections:
        """The projections the events replay to; TaskFlow must be able to load each row."""
        rows = [
            SimpleNamespace(build_id=self.build_id, **{n: e[n] for n in _EVENT_FIELDS})
            for e in events
        ]
        try:
            projections = replay_events(rows)
        except (KeyError, TypeError, ValueError, AttributeError, IllegalTransition) as exc:
            raise InvalidExport(
                f"{self.c.source}: the events of build {self.build_id} "
                f"do not replay: {_shown(exc, 80)}"
            ) from None
        for table, load in (
            ("logbooks", lambda r: models.LogBook.from_dict(r["doc"], unmarshal_time=True)),
            ("flowdetails", lambda r: models.FlowDetail.from_dict(r["doc"])),
            ("atomdetails", lambda r: models.atom_detail_class(r["atom_type"]).from_dict(r["doc"])),
        ):
            for uuid_, row in projections[table].items():
                try:
                    load(row)
                except Exception as exc:
                    raise InvalidExport(
                        f"{self.c.source}: TaskFlow cannot read the {table[:-1]} {uuid_} the "
                        f"events make: {type(exc).__name__}: {_shown(str(exc), 80)}"
                    ) from None
        return projections


def _member(value: Any, allowed: Any) -> bool:
    """``value in allowed`` for any JSON value (a list or an object is never a member)."""
    return isinstance(value, str) and value in allowed


def _applied(
    old: dict[str, Any] | None, changed: dict[str, Any], unset: list[str]
) -> dict[str, Any]:
    """``old`` after a set/unset change, as replay applies it."""
    doc = dict(old or {})
    doc.update(changed)
    for key in unset:
        doc.pop(key, None)
    return doc


def replay_build_row(build_id: str, events: Iterable[Any]) -> dict[str, Any]:
    """The ``builds`` row the build's events (rows or dicts, seq order) describe."""
    rows = [
        SimpleNamespace(**{"build_id": build_id, "seq": None, "payload": None, **e})
        if isinstance(e, dict)
        else e
        for e in events
    ]
    try:
        row = replay_events(r for r in rows if r.kind == BUILD)["builds"].get(build_id)
    except (KeyError, TypeError, AttributeError, ValueError, IllegalTransition) as exc:
        raise InvalidExport(
            f"the events of build {build_id} are malformed: {_shown(exc, 80)}"
        ) from None
    if row is None or not row["instance_uuid"] or row["host"] is None:
        raise InvalidExport(f"the events of build {build_id} do not describe its creation")
    return row


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
            f"the events of build {build_id} do not replay: {_shown(exc, 80)}"
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
            f"{_shown(expected['host'])} on the target would try to recover it; import it "
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
            _check_against(doc["build"], row)
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
            f"({existing.state} on host {_shown(existing.host)}); "
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


def _check_against(
    exported: dict[str, Any], replayed: dict[str, Any], source: str = "document"
) -> None:
    """The document's builds row must be what its events say (else it was edited)."""
    for name in ("instance_uuid", "instance_name", "host", "state", "error"):
        if name in exported and exported[name] != replayed[name]:
            raise InvalidExport(
                f"{source}: the export's build row says {name}={_shown(exported[name])} but "
                f"its events say {_shown(replayed[name])}; the document is inconsistent, "
                "nothing imported"
            )
    for name in ("created_at", "updated_at"):
        value = exported.get(name)
        if isinstance(value, (int, float)) and abs(value - replayed[name]) > _CLOCK_SLACK:
            raise InvalidExport(
                f"{source}: the export's build row says {name}={value} but its events say "
                f"{replayed[name]}; the document is inconsistent, nothing imported"
            )
