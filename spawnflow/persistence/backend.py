"""TaskFlow persistence backend on the event log.

TaskFlow saves logbooks, flow details and atom details through this backend;
each save becomes one event (with the changed fields) plus a projection row,
in one transaction. Atom and flow state changes are checked against
TaskFlow's transition rules (plus the ones recovery needs) before anything is
written. The logbook uuid is the build id, so every event of a build carries it.

Only saves that announce a side effect (an atom or flow going RUNNING or
REVERTING) are committed on the spot; the rest are deferred to the build's
next commit (see ``EventLog``). The backend keeps the atoms it wrote in a
cache so that a save costs no read; reads from other connections or
processes see the committed log.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from taskflow import exceptions as tf_exc
from taskflow import states
from taskflow.persistence import base, models

from spawnflow.exceptions import IllegalTransition
from spawnflow.persistence import tables as t
from spawnflow.persistence.eventlog import ATOM, FLOW, LOGBOOK, EventLog
from spawnflow.persistence.redact import redact

# Recovery reverts an atom that was RUNNING when the agent died (TaskFlow moves
# it straight to REVERTING), which TaskFlow's own table does not list.
_RECOVERY_ATOM_TRANSITIONS = frozenset({(states.RUNNING, states.REVERTING)})


def check_atom_transition(atom_type: str, old: str | None, new: str | None) -> None:
    if old == new or old is None or new is None:
        return
    allowed = (states.check_retry_transition if atom_type == "RETRY_DETAIL"
               else states.check_task_transition)
    if not allowed(old, new) and (old, new) not in _RECOVERY_ATOM_TRANSITIONS:
        raise IllegalTransition(f"atom transition {old} -> {new} is not allowed")


def check_flow_transition(old: str | None, new: str | None) -> None:
    if old is None or new is None:
        return
    try:
        states.check_flow_transition(old, new)
    except tf_exc.InvalidState as exc:
        raise IllegalTransition(str(exc)) from None


# A state change to one of these announces work on the host: it is committed
# before TaskFlow goes on. Every other save may ride with the next one.
DURABLE_STATES = frozenset({states.RUNNING, states.REVERTING})


_INSERT_EVENT = sa.insert(t.events)
_INSERT_ATOM = sa.insert(t.atomdetails)
_UPDATE_ATOM = sa.update(t.atomdetails).where(t.atomdetails.c.uuid == sa.bindparam("b_uuid"))


def _durable(old_state: str | None, new_state: str | None) -> bool:
    return new_state != old_state and new_state in DURABLE_STATES


def _diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    changed = {k: v for k, v in new.items() if k not in old or old[k] != v}
    gone = [k for k in old if k not in new]
    out: dict[str, Any] = {}
    if changed:
        out["set"] = changed
    if gone:
        out["unset"] = gone
    return out


def _atom_doc(ad: models.AtomDetail) -> dict[str, Any]:
    return redact(ad.to_dict())


@dataclass
class _Cached:
    """The projection row of an atom as last written (or deferred) by this process."""

    atom_type: str
    flow_uuid: str
    book_uuid: str
    state: str | None
    doc: dict[str, Any]

    def detail(self) -> models.AtomDetail:
        # A copy: TaskFlow's merge mutates nested dicts (meta) in place, and the
        # cached doc must stay what was written, or the next diff misses changes.
        return models.atom_detail_class(self.atom_type).from_dict(copy.deepcopy(self.doc))


def _merged(old: _Cached, incoming: models.AtomDetail) -> models.AtomDetail:
    """``old`` merged with ``incoming``, as TaskFlow's own backends do.

    A TaskDetail's merge overwrites every persisted field with the incoming
    one, so the incoming detail *is* the merge (and rebuilding the old one from
    the cache would only cost a deep copy); retries merge their history.
    """
    if old.atom_type == models.atom_detail_type(incoming) == "TASK_DETAIL":
        return incoming
    return old.detail().merge(incoming)


class EventLogBackend(base.Backend):
    """``taskflow.persistence.base.Backend`` whose truth is the spawnflow event log."""

    def __init__(self, conf: dict[str, Any] | None = None, eventlog: EventLog | None = None):
        super().__init__(conf or {})
        self.eventlog = eventlog or EventLog.open(self._conf["connection"])
        self._owns_log = eventlog is None
        self.atoms: dict[str, _Cached] = {}
        self.cache_lock = threading.Lock()

    def get_connection(self) -> EventLogConnection:
        return EventLogConnection(self)

    def forget(self, book_uuid: str | None = None) -> None:
        """Drop cached atoms (of one book, or all): the next save reads the log."""
        with self.cache_lock:
            if book_uuid is None:
                self.atoms.clear()
            else:
                for uuid in [u for u, c in self.atoms.items() if c.book_uuid == book_uuid]:
                    del self.atoms[uuid]

    def close(self) -> None:
        self.eventlog.flush(all_builds=True)
        if self._owns_log:
            self.eventlog.close()


class EventLogConnection(base.Connection):
    def __init__(self, backend: EventLogBackend):
        self._backend = backend
        self._log = backend.eventlog

    @property
    def backend(self) -> EventLogBackend:
        return self._backend

    def close(self) -> None:
        pass

    def upgrade(self) -> None:
        from spawnflow.persistence import schema
        schema.upgrade(self._log.engine)

    def validate(self) -> None:
        with self._log.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def clear_all(self) -> None:
        self._log.flush(all_builds=True)
        with self._log.transaction() as conn:
            for table in (t.atomdetails, t.flowdetails, t.logbooks):
                conn.execute(sa.delete(table))
            self._log.append(conn, kind=LOGBOOK, build_id=None, subject=None,
                             to_state="CLEARED")
        self._backend.forget()

    # -- writes -------------------------------------------------------------------

    def _cached_atom(self, conn: sa.Connection | None, uuid: str) -> _Cached | None:
        cached = self._backend.atoms.get(uuid)
        if cached is not None:
            return cached
        query = sa.select(t.atomdetails).where(t.atomdetails.c.uuid == uuid)
        if conn is None:
            with self._log.engine.connect() as reader:
                row = reader.execute(query).first()
        else:
            row = conn.execute(query).first()
        if row is None:
            return None
        return _Cached(row.atom_type, row.flow_uuid, row.book_uuid, row.state, row.doc)

    def _save_atom(self, ad: models.AtomDetail, flow_uuid: str, book_uuid: str,
                   old: _Cached | None, conn: sa.Connection | None = None) -> None:
        """Write one atom: inside ``conn`` if given, else deferred (and committed at once
        when the change is a durability point)."""
        atom_type = models.atom_detail_type(ad)
        doc = _atom_doc(ad)
        if old is None:
            check_atom_transition(atom_type, None, ad.state)
            payload = {"parent": flow_uuid, "type": atom_type, "set": doc}
            from_state = None
        else:
            check_atom_transition(atom_type, old.state, ad.state)
            payload = _diff(old.doc, doc)
            if not payload:
                return
            from_state = old.state
        event = {"build_id": book_uuid, "ts": time.time(), "kind": ATOM, "subject": ad.uuid,
                 "name": ad.name, "from_state": from_state, "to_state": ad.state,
                 "payload": payload}
        row = {"uuid": ad.uuid, "flow_uuid": flow_uuid, "book_uuid": book_uuid,
               "name": ad.name, "atom_type": atom_type, "state": ad.state,
               "intention": ad.intention, "doc": doc}
        with self._backend.cache_lock:
            self._backend.atoms[ad.uuid] = _Cached(atom_type, flow_uuid, book_uuid, ad.state,
                                                   doc)
        if conn is not None:
            conn.execute(_INSERT_EVENT, event)
            if old is None:
                conn.execute(_INSERT_ATOM, row)
            else:
                conn.execute(_UPDATE_ATOM, {"b_uuid": ad.uuid, **row})
            return
        self._log.defer(book_uuid, event, row)
        if _durable(from_state, ad.state):
            with self._forget_on_error(book_uuid):
                self._log.flush(book_uuid)

    @contextlib.contextmanager
    def _forget_on_error(self, book_uuid: str) -> Iterator[None]:
        """The cache runs ahead of the commit; a failed commit must not leave it ahead
        (the next save would diff against state the log never got, and write nothing)."""
        try:
            yield
        except BaseException:
            self._backend.forget(book_uuid)
            raise

    def _write_flow(self, conn: sa.Connection, fd: models.FlowDetail,
                    book_uuid: str) -> models.FlowDetail:
        """Write a flow detail and its atoms inside ``conn``; return the merged flow."""
        row = conn.execute(sa.select(t.flowdetails).where(t.flowdetails.c.uuid == fd.uuid)).first()
        if row is None:
            merged = fd.copy(retain_contents=False)
            doc = redact(merged.to_dict())
            self._log.append(conn, kind=FLOW, build_id=book_uuid, subject=fd.uuid, name=fd.name,
                             to_state=fd.state, payload={"parent": book_uuid, "set": doc},
                             redacted=True)
            conn.execute(sa.insert(t.flowdetails).values(
                uuid=fd.uuid, book_uuid=book_uuid, name=fd.name, state=fd.state, doc=doc))
        else:
            merged = models.FlowDetail.from_dict(row.doc)
            check_flow_transition(merged.state, fd.state)
            merged.merge(fd)
            doc = redact(merged.to_dict())
            change = _diff(row.doc, doc)
            if change:
                self._log.append(conn, kind=FLOW, build_id=book_uuid, subject=fd.uuid,
                                 name=merged.name, from_state=row.state, to_state=merged.state,
                                 payload=change, redacted=True)
                conn.execute(sa.update(t.flowdetails).where(t.flowdetails.c.uuid == fd.uuid)
                             .values(name=merged.name, state=merged.state, doc=doc))
        known = {ad.uuid for ad in fd}
        for ad in fd:
            old = self._cached_atom(conn, ad.uuid)
            atom = _merged(old, ad) if old is not None else ad
            self._save_atom(atom, fd.uuid, book_uuid, old, conn)
            merged.add(atom)
        # Atoms saved earlier but absent from this (partial) flow detail.
        query = sa.select(t.atomdetails).where(t.atomdetails.c.flow_uuid == fd.uuid)
        if len(known) != conn.execute(sa.select(sa.func.count()).select_from(query.subquery()))\
                .scalar():
            for extra in self._atoms(conn, fd.uuid):
                if extra.uuid not in known:
                    merged.add(extra)
        return merged

    def update_atom_details(self, atom_detail: models.AtomDetail) -> models.AtomDetail:
        old = self._cached_atom(None, atom_detail.uuid)
        if old is None:
            raise tf_exc.NotFound(f"No atom details found with uuid '{atom_detail.uuid}'")
        merged = _merged(old, atom_detail)
        self._save_atom(merged, old.flow_uuid, old.book_uuid, old)
        return merged

    def update_flow_details(self, flow_detail: models.FlowDetail) -> models.FlowDetail:
        with self._log.engine.connect() as reader:
            row = reader.execute(sa.select(t.flowdetails.c.book_uuid)
                                 .where(t.flowdetails.c.uuid == flow_detail.uuid)).first()
        if row is None:
            raise tf_exc.NotFound(f"No flow details found with uuid '{flow_detail.uuid}'")
        with self._forget_on_error(row.book_uuid), self._log.transaction(row.book_uuid) as conn:
            return self._write_flow(conn, flow_detail, row.book_uuid)

    def save_logbook(self, book: models.LogBook) -> models.LogBook:
        with self._forget_on_error(book.uuid), self._log.transaction(book.uuid) as conn:
            row = conn.execute(sa.select(t.logbooks).where(t.logbooks.c.uuid == book.uuid)).first()
            if row is None:
                doc = redact(book.to_dict(marshal_time=True))
                self._log.append(conn, kind=LOGBOOK, build_id=book.uuid, subject=book.uuid,
                                 name=book.name, payload={"set": doc})
                conn.execute(sa.insert(t.logbooks).values(uuid=book.uuid, name=book.name,
                                                          doc=doc))
            else:
                existing = models.LogBook.from_dict(row.doc, unmarshal_time=True)
                existing.merge(book)
                doc = redact(existing.to_dict(marshal_time=True))
                change = _diff(row.doc, doc)
                if change:
                    self._log.append(conn, kind=LOGBOOK, build_id=book.uuid, subject=book.uuid,
                                     name=existing.name, payload=change)
                    conn.execute(sa.update(t.logbooks).where(t.logbooks.c.uuid == book.uuid)
                                 .values(name=existing.name, doc=doc))
            for fd in book:
                self._write_flow(conn, fd, book.uuid)
            return self._book(conn, book.uuid, lazy=False)

    def destroy_logbook(self, book_uuid: str) -> None:
        with self._log.transaction(book_uuid) as conn:
            gone = conn.execute(sa.delete(t.logbooks).where(t.logbooks.c.uuid == book_uuid))
            if gone.rowcount == 0:
                raise tf_exc.NotFound(f"No logbook found with uuid '{book_uuid}'")
            conn.execute(sa.delete(t.atomdetails).where(t.atomdetails.c.book_uuid == book_uuid))
            conn.execute(sa.delete(t.flowdetails).where(t.flowdetails.c.book_uuid == book_uuid))
            self._log.append(conn, kind=LOGBOOK, build_id=book_uuid, subject=book_uuid,
                             to_state="DESTROYED")
        self._backend.forget(book_uuid)

    # -- reads (deferred writes are committed first, so a read sees every save) ------

    def _reader(self) -> sa.Connection:
        self._log.flush(all_builds=True)
        return self._log.engine.connect()

    def _atoms(self, conn: sa.Connection, flow_uuid: str) -> list[models.AtomDetail]:
        query = sa.select(t.atomdetails).where(t.atomdetails.c.flow_uuid == flow_uuid)
        return [models.atom_detail_class(row.atom_type).from_dict(row.doc)
                for row in conn.execute(query)]

    def _flow(self, conn: sa.Connection, uuid: str, lazy: bool) -> models.FlowDetail:
        row = conn.execute(sa.select(t.flowdetails).where(t.flowdetails.c.uuid == uuid)).first()
        if row is None:
            raise tf_exc.NotFound(f"No flow details found with uuid '{uuid}'")
        fd = models.FlowDetail.from_dict(row.doc)
        if not lazy:
            for ad in self._atoms(conn, uuid):
                fd.add(ad)
        return fd

    def _book(self, conn: sa.Connection, uuid: str, lazy: bool) -> models.LogBook:
        row = conn.execute(sa.select(t.logbooks).where(t.logbooks.c.uuid == uuid)).first()
        if row is None:
            raise tf_exc.NotFound(f"No logbook found with uuid '{uuid}'")
        book = models.LogBook.from_dict(row.doc, unmarshal_time=True)
        if not lazy:
            for fd in self._flows(conn, uuid, lazy=False):
                book.add(fd)
        return book

    def _flows(self, conn: sa.Connection, book_uuid: str, lazy: bool) -> list[models.FlowDetail]:
        query = sa.select(t.flowdetails.c.uuid).where(t.flowdetails.c.book_uuid == book_uuid)
        return [self._flow(conn, row.uuid, lazy) for row in conn.execute(query)]

    def get_logbook(self, book_uuid: str, lazy: bool = False) -> models.LogBook:
        with self._reader() as conn:
            return self._book(conn, book_uuid, lazy)

    def get_logbooks(self, lazy: bool = False) -> Iterator[models.LogBook]:
        with self._reader() as conn:
            uuids = [row.uuid for row in conn.execute(sa.select(t.logbooks.c.uuid))]
            books = [self._book(conn, uuid, lazy) for uuid in uuids]
        yield from books

    def get_flows_for_book(self, book_uuid: str, lazy: bool = False
                           ) -> Iterator[models.FlowDetail]:
        with self._reader() as conn:
            flows = self._flows(conn, book_uuid, lazy)
        yield from flows

    def get_flow_details(self, fd_uuid: str, lazy: bool = False) -> models.FlowDetail:
        with self._reader() as conn:
            return self._flow(conn, fd_uuid, lazy)

    def get_atom_details(self, ad_uuid: str) -> models.AtomDetail:
        with self._reader() as conn:
            row = conn.execute(sa.select(t.atomdetails)
                               .where(t.atomdetails.c.uuid == ad_uuid)).first()
        if row is None:
            raise tf_exc.NotFound(f"No atom details found with uuid '{ad_uuid}'")
        return models.atom_detail_class(row.atom_type).from_dict(row.doc)

    def get_atoms_for_flow(self, fd_uuid: str) -> Iterator[models.AtomDetail]:
        with self._reader() as conn:
            atoms = self._atoms(conn, fd_uuid)
        yield from atoms
