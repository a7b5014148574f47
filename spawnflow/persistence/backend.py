"""TaskFlow persistence backend on the event log.

TaskFlow saves logbooks, flow details and atom details through this backend;
each save becomes one event (with the changed fields) plus a projection row,
in one transaction. Atom and flow state changes are checked against
TaskFlow's transition rules (plus the ones recovery needs) before anything is
written. The logbook uuid is the build id, so every event of a build carries it.
"""

from __future__ import annotations

from collections.abc import Iterator
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


def _atom_from(row: Any) -> models.AtomDetail:
    return models.atom_detail_class(row.atom_type).from_dict(row.doc)


class EventLogBackend(base.Backend):
    """``taskflow.persistence.base.Backend`` whose truth is the spawnflow event log."""

    def __init__(self, conf: dict[str, Any] | None = None, eventlog: EventLog | None = None):
        super().__init__(conf or {})
        self.eventlog = eventlog or EventLog.open(self._conf["connection"])
        self._owns_log = eventlog is None

    def get_connection(self) -> EventLogConnection:
        return EventLogConnection(self)

    def close(self) -> None:
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
        with self._log.transaction() as conn:
            for table in (t.atomdetails, t.flowdetails, t.logbooks):
                conn.execute(sa.delete(table))
            self._log.append(conn, kind=LOGBOOK, build_id=None, subject=None,
                             to_state="CLEARED")

    # -- writes -------------------------------------------------------------------

    def _write_atom(self, conn: sa.Connection, ad: models.AtomDetail, flow_uuid: str,
                    book_uuid: str, old: Any | None) -> None:
        atom_type = models.atom_detail_type(ad)
        doc = _atom_doc(ad)
        if old is None:
            check_atom_transition(atom_type, None, ad.state)
            self._log.append(conn, kind=ATOM, build_id=book_uuid, subject=ad.uuid, name=ad.name,
                             to_state=ad.state,
                             payload={"parent": flow_uuid, "type": atom_type, "set": doc})
            conn.execute(sa.insert(t.atomdetails).values(
                uuid=ad.uuid, flow_uuid=flow_uuid, book_uuid=book_uuid, name=ad.name,
                atom_type=atom_type, state=ad.state, intention=ad.intention, doc=doc))
            return
        check_atom_transition(atom_type, old.state, ad.state)
        change = _diff(old.doc, doc)
        if not change:
            return
        self._log.append(conn, kind=ATOM, build_id=book_uuid, subject=ad.uuid, name=ad.name,
                         from_state=old.state, to_state=ad.state, payload=change)
        conn.execute(sa.update(t.atomdetails).where(t.atomdetails.c.uuid == ad.uuid).values(
            name=ad.name, state=ad.state, intention=ad.intention, doc=doc))

    def _atom_row(self, conn: sa.Connection, uuid: str) -> Any:
        query = sa.select(t.atomdetails).where(t.atomdetails.c.uuid == uuid)
        return conn.execute(query).first()

    def _write_flow(self, conn: sa.Connection, fd: models.FlowDetail, book_uuid: str) -> None:
        row = conn.execute(sa.select(t.flowdetails).where(t.flowdetails.c.uuid == fd.uuid)).first()
        if row is None:
            doc = redact(fd.to_dict())
            self._log.append(conn, kind=FLOW, build_id=book_uuid, subject=fd.uuid, name=fd.name,
                             to_state=fd.state, payload={"parent": book_uuid, "set": doc})
            conn.execute(sa.insert(t.flowdetails).values(
                uuid=fd.uuid, book_uuid=book_uuid, name=fd.name, state=fd.state, doc=doc))
        else:
            existing = models.FlowDetail.from_dict(row.doc)
            check_flow_transition(existing.state, fd.state)
            existing.merge(fd)
            doc = redact(existing.to_dict())
            change = _diff(row.doc, doc)
            if change:
                self._log.append(conn, kind=FLOW, build_id=book_uuid, subject=fd.uuid,
                                 name=existing.name, from_state=row.state,
                                 to_state=existing.state, payload=change)
                conn.execute(sa.update(t.flowdetails).where(t.flowdetails.c.uuid == fd.uuid)
                             .values(name=existing.name, state=existing.state, doc=doc))
        for ad in fd:
            old = self._atom_row(conn, ad.uuid)
            if old is not None:
                merged = _atom_from(old).merge(ad)
                self._write_atom(conn, merged, fd.uuid, book_uuid, old)
            else:
                self._write_atom(conn, ad, fd.uuid, book_uuid, None)

    def update_atom_details(self, atom_detail: models.AtomDetail) -> models.AtomDetail:
        with self._log.transaction() as conn:
            old = self._atom_row(conn, atom_detail.uuid)
            if old is None:
                raise tf_exc.NotFound(f"No atom details found with uuid '{atom_detail.uuid}'")
            merged = _atom_from(old).merge(atom_detail)
            self._write_atom(conn, merged, old.flow_uuid, old.book_uuid, old)
        return merged

    def update_flow_details(self, flow_detail: models.FlowDetail) -> models.FlowDetail:
        with self._log.transaction() as conn:
            row = conn.execute(sa.select(t.flowdetails.c.book_uuid)
                               .where(t.flowdetails.c.uuid == flow_detail.uuid)).first()
            if row is None:
                raise tf_exc.NotFound(f"No flow details found with uuid '{flow_detail.uuid}'")
            self._write_flow(conn, flow_detail, row.book_uuid)
            return self._flow(conn, flow_detail.uuid, lazy=False)

    def save_logbook(self, book: models.LogBook) -> models.LogBook:
        with self._log.transaction() as conn:
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
        with self._log.transaction() as conn:
            gone = conn.execute(sa.delete(t.logbooks).where(t.logbooks.c.uuid == book_uuid))
            if gone.rowcount == 0:
                raise tf_exc.NotFound(f"No logbook found with uuid '{book_uuid}'")
            conn.execute(sa.delete(t.atomdetails).where(t.atomdetails.c.book_uuid == book_uuid))
            conn.execute(sa.delete(t.flowdetails).where(t.flowdetails.c.book_uuid == book_uuid))
            self._log.append(conn, kind=LOGBOOK, build_id=book_uuid, subject=book_uuid,
                             to_state="DESTROYED")

    # -- reads --------------------------------------------------------------------

    def _atoms(self, conn: sa.Connection, flow_uuid: str) -> list[models.AtomDetail]:
        query = sa.select(t.atomdetails).where(t.atomdetails.c.flow_uuid == flow_uuid)
        return [_atom_from(row) for row in conn.execute(query)]

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
        with self._log.engine.connect() as conn:
            return self._book(conn, book_uuid, lazy)

    def get_logbooks(self, lazy: bool = False) -> Iterator[models.LogBook]:
        with self._log.engine.connect() as conn:
            uuids = [row.uuid for row in conn.execute(sa.select(t.logbooks.c.uuid))]
            books = [self._book(conn, uuid, lazy) for uuid in uuids]
        yield from books

    def get_flows_for_book(self, book_uuid: str, lazy: bool = False
                           ) -> Iterator[models.FlowDetail]:
        with self._log.engine.connect() as conn:
            flows = self._flows(conn, book_uuid, lazy)
        yield from flows

    def get_flow_details(self, fd_uuid: str, lazy: bool = False) -> models.FlowDetail:
        with self._log.engine.connect() as conn:
            return self._flow(conn, fd_uuid, lazy)

    def get_atom_details(self, ad_uuid: str) -> models.AtomDetail:
        with self._log.engine.connect() as conn:
            row = self._atom_row(conn, ad_uuid)
        if row is None:
            raise tf_exc.NotFound(f"No atom details found with uuid '{ad_uuid}'")
        return _atom_from(row)

    def get_atoms_for_flow(self, fd_uuid: str) -> Iterator[models.AtomDetail]:
        with self._log.engine.connect() as conn:
            atoms = self._atoms(conn, fd_uuid)
        yield from atoms
