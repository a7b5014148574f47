"""Checking an export document's events: every state change against the machines, then a replay.

The events are walked in order with the lifecycle table and TaskFlow's flow
and atom transition tables, keeping which ids the document owns (its
logbook, flows and atoms); then they are replayed into projections that
TaskFlow must be able to load. The result is ``Checked``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from taskflow import states as tf_states
from taskflow.persistence import models

from spawnflow.exceptions import IllegalTransition
from spawnflow.history.import_values import (
    ATOM_STATES,
    ATOM_TYPES,
    EVENT_FIELDS,
    FLOW_STATES,
    ID_LEN,
    NAME_LEN,
    STATE_LEN,
    Checker,
    InvalidExport,
    shown,
)
from spawnflow.persistence import lifecycle
from spawnflow.persistence.eventlog import ATOM, BUILD, FLOW, LOGBOOK
from spawnflow.persistence.replay import Projections, replay_events
from spawnflow.persistence.transitions import (
    KIND_KEY,
    REASON_KEY,
    check_recorded_atom,
    check_recorded_flow,
)


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


class EventsCheck:
    """Walks a document's events in order, as replay will, checking each change."""

    def __init__(self, c: Checker, build_id: str):
        self.c, self.build_id = c, build_id
        self.state: str | None = None  # the build's lifecycle state so far
        self.kind = lifecycle.SPAWN  # the build's kind (its first event's payload says)
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
                f"says {shown(event['from_state'])} but the state was {shown(old)}",
            )

    def build(self, event: dict[str, Any], path: tuple[Any, ...]) -> None:
        c = self.c
        if event["subject"] != self.build_id:
            raise c.bad(path + ("subject",), "a build event's subject must be the build id")
        c.column(event["name"], path + ("name",), NAME_LEN, required=True)
        if self.state is None:
            kind = (event["payload"] or {}).get("kind", lifecycle.SPAWN)
            if kind not in lifecycle.KINDS:
                raise c.bad(path + ("payload", "kind"), f"no kind of build {shown(kind)}")
            self.kind = kind
        try:
            lifecycle.check(self.state, event["to_state"], self.kind)
        except IllegalTransition:
            # Said with shown(): the state comes from the document, and may
            # hold anything (a newline, a terminal escape).
            raise c.bad(
                path,
                f"build transition {_state(self.state)} -> {_state(event['to_state'])} "
                "is not allowed",
            ) from None
        self._transition(event, self.state, path)
        payload = event["payload"] or {}
        if self.state is None:
            c.column(
                payload.get("host"),
                path + ("payload", "host"),
                NAME_LEN,
                required=True,
                empty=False,
            )
            instance = payload.get("instance_uuid")
            where = path + ("payload", "instance_uuid")
            if instance is None:
                spec_instance = payload["spec"].get("instance")
                where = path + ("payload", "spec", "instance")
                instance = spec_instance.get("uuid") if isinstance(spec_instance, dict) else None
            c.column(instance, where, ID_LEN, required=True, empty=False)
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
                path + ("to_state",), f"logbook {shown(event['to_state'])} cannot be imported"
            )
        payload = c.obj(event["payload"], path + ("payload",))
        c.keys(payload, ("set", "unset"), path + ("payload",))
        changed, unset = c.changes(payload, path + ("payload",))
        self.book = applied(self.book, changed, unset)
        self._doc_fields(self.book, path, ("name", "uuid"))

    def flow(self, event: dict[str, Any], path: tuple[Any, ...]) -> None:
        c = self.c
        subject = c.uuid(event["subject"], path + ("subject",))
        if subject == self.build_id or subject in self.atoms:
            raise c.bad(path + ("subject",), "a flow's id must be its own")
        payload = c.obj(event["payload"], path + ("payload",))
        c.keys(payload, ("parent", "set", "unset", KIND_KEY, REASON_KEY), path + ("payload",))
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
        doc = applied(old, changed, unset)
        self._doc_fields(doc, path, ("name", "uuid"), subject)
        state = doc.get("state")
        if state is not None and not member(state, FLOW_STATES):
            raise c.bad(
                path + ("payload", "set", "state"), f"{shown(state)} is not a TaskFlow flow state"
            )
        old_state = old.get("state") if old else None
        try:
            check_recorded_flow(old_state, state, payload)
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
        c.keys(
            payload, ("parent", "type", "set", "unset", KIND_KEY, REASON_KEY), path + ("payload",)
        )
        known = self.atom_of.get(subject)
        if known is None:
            if not member(payload.get("parent"), self.flows):
                raise c.bad(
                    path + ("payload", "parent"),
                    "an atom's parent must be one of this build's flows (created before it)",
                )
            if not member(payload.get("type"), ATOM_TYPES):
                raise c.bad(
                    path + ("payload", "type"), f"must be one of {', '.join(sorted(ATOM_TYPES))}"
                )
            known = self.atom_of[subject] = (payload["type"], payload["parent"])
        for field, value in zip(("type", "parent"), known, strict=True):
            if field in payload and payload[field] != value:
                raise c.bad(
                    path + ("payload", field),
                    f"differs from the atom's first event ({shown(value)})",
                )
        changed, unset = c.changes(payload, path + ("payload",))
        old = self.atoms.get(subject)
        doc = applied(old, changed, unset)
        self._doc_fields(doc, path, ("name", "uuid"), subject)
        state = doc.get("state")
        if state is not None and not member(state, ATOM_STATES):
            raise c.bad(
                path + ("payload", "set", "state"), f"{shown(state)} is not a TaskFlow atom state"
            )
        intention = doc.get("intention")
        if intention is not None and not member(intention, tf_states.INTENTIONS):
            raise c.bad(
                path + ("payload", "set", "intention"),
                f"{shown(intention)} is not a TaskFlow intention",
            )
        for field in ("meta", "failure", "revert_failure"):
            if doc.get(field) is not None and not isinstance(doc[field], dict):
                raise c.bad(path + ("payload", "set", field), "must be an object or null")
        old_state = old.get("state") if old else None
        try:
            check_recorded_atom(known[0], old_state, state, payload)
        except IllegalTransition as exc:
            raise c.bad(path, str(exc)) from None
        self._states(event, old_state, state, path)
        self.atoms[subject] = doc

    def external(self, event: dict[str, Any], path: tuple[Any, ...]) -> None:
        c = self.c
        c.column(event["subject"], path + ("subject",), ID_LEN, required=True, empty=False)
        c.column(event["name"], path + ("name",), NAME_LEN, required=True, empty=False)
        c.column(event["to_state"], path + ("to_state",), STATE_LEN, required=True, empty=False)
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
                f"says {shown(event['to_state'])} but the change makes it {shown(new)}",
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
            self.c.column(doc.get("name"), where + ("name",), NAME_LEN)
        own = subject or self.build_id
        if "uuid" in fields and doc.get("uuid", own) != own:
            raise self.c.bad(where + ("uuid",), "is not the id the event is about")
        if doc.get("meta") is not None and not isinstance(doc["meta"], dict):
            raise self.c.bad(where + ("meta",), "must be an object or null")

    def replay(self, events: list[dict[str, Any]]) -> Projections:
        """The projections the events replay to; TaskFlow must be able to load each row."""
        rows = [
            SimpleNamespace(build_id=self.build_id, **{n: e[n] for n in EVENT_FIELDS})
            for e in events
        ]
        try:
            projections = replay_events(rows)
        except (KeyError, TypeError, ValueError, AttributeError, IllegalTransition) as exc:
            raise InvalidExport(
                f"{self.c.source}: the events of build {self.build_id} "
                f"do not replay: {shown(exc, 80)}"
            ) from None
        loaders: tuple[tuple[str, Callable[[dict[str, Any]], object]], ...] = (
            ("logbooks", lambda r: models.LogBook.from_dict(r["doc"], unmarshal_time=True)),
            ("flowdetails", lambda r: models.FlowDetail.from_dict(r["doc"])),
            ("atomdetails", lambda r: models.atom_detail_class(r["atom_type"]).from_dict(r["doc"])),
        )
        for table, load in loaders:
            for uuid_, row in projections[table].items():
                try:
                    load(row)
                except Exception as exc:
                    raise InvalidExport(
                        f"{self.c.source}: TaskFlow cannot read the {table[:-1]} {uuid_} the "
                        f"events make: {type(exc).__name__}: {shown(str(exc), 80)}"
                    ) from None
        return projections


def _state(value: Any) -> str:
    """A lifecycle state as the log spells it; anything else escaped (``shown``)."""
    return str(value) if value is None or value in lifecycle.STATES else shown(value)


def member(value: Any, allowed: Any) -> bool:
    """``value in allowed`` for any JSON value (a list or an object is never a member)."""
    return isinstance(value, str) and value in allowed


def applied(
    old: dict[str, Any] | None, changed: dict[str, Any], unset: list[str]
) -> dict[str, Any]:
    """``old`` after a set/unset change, as replay applies it."""
    doc = dict(old or {})
    doc.update(changed)
    for key in unset:
        doc.pop(key, None)
    return doc
