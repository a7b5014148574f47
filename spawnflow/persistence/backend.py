"""TaskFlow persistence backend on the event log.

TaskFlow saves logbooks, flow details and atom details through this backend;
each save becomes one event (with the changed fields) plus a projection row.
Atom and flow state changes are checked against TaskFlow's transition rules
(plus the ones recovery needs) before anything is written, and a save is
staged whole before any of it is queued, so an illegal one writes nothing.
The logbook uuid is the build id, so every event of a build carries it.

Only saves that announce a side effect (an atom going RUNNING or REVERTING)
or end a run (a flow going SUCCESS, FAILURE, REVERTED or SUSPENDED), and
logbook saves, are committed on the spot; the rest are deferred to the
build's next commit (see ``EventLog``). The backend keeps what it wrote in a
``ProjectionCache`` so that a save costs no read; reads from other
connections or processes see the committed log.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from taskflow import exceptions as tf_exc
from taskflow.persistence import base, models

from spawnflow.persistence import db
from spawnflow.persistence import tables as t
from spawnflow.persistence.batch import Batch
from spawnflow.persistence.cache import CachedAtom, CachedFlow, ProjectionCache
from spawnflow.persistence.changes import Changes, diff, merge_atom
from spawnflow.persistence.eventlog import ATOM, FLOW, LOGBOOK, EventLog
from spawnflow.persistence.redact import redact
from spawnflow.persistence.transitions import (
    DURABLE_STATES,
    FLOW_DURABLE_STATES,
    KIND_KEY,
    OVERRIDE,
    atom_marker,
    flow_marker,
)


class EventLogBackend(base.Backend):  # type: ignore[misc]  # TaskFlow ships no types
    """``taskflow.persistence.base.Backend`` whose truth is the spawnflow event log."""

    def __init__(self, conf: dict[str, Any] | None = None, eventlog: EventLog | None = None):
        super().__init__(conf or {})
        self.eventlog = eventlog or EventLog.open(self._conf["connection"])
        self._owns_log = eventlog is None
        self.cache = ProjectionCache()

    def get_connection(self) -> EventLogConnection:
        return EventLogConnection(self)

    def forget(self, book_uuid: str | None = None) -> None:
        """Drop cached flows and atoms (of one book, or all): the next save reads the log."""
        self.cache.forget(book_uuid)

    def close(self) -> None:
        self.eventlog.flush(all_builds=True)
        if self._owns_log:
            self.eventlog.close()


class EventLogConnection(base.Connection):  # type: ignore[misc]  # TaskFlow ships no types
    def __init__(self, backend: EventLogBackend):
        self._backend = backend
        self._log = backend.eventlog
        self._cache = backend.cache

    @property
    def backend(self) -> EventLogBackend:
        return self._backend

    def close(self) -> None:
        pass

    def upgrade(self) -> None:
        db.upgrade(self._log.engine)

    def validate(self) -> None:
        with self._log.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def clear_all(self) -> None:
        self._log.flush(all_builds=True)
        with self._log.transaction() as conn:
            for table in (t.atomdetails, t.flowdetails, t.logbooks):
                conn.execute(sa.delete(table))
            self._log.append(conn, kind=LOGBOOK, build_id=None, subject=None, to_state="CLEARED")
        self._backend.forget()

    # -- what was written: the cache, else the log ---------------------------------

    def _load(self, where: sa.ColumnElement[bool]) -> dict[str, CachedAtom]:
        """Read atoms from the log (after committing every deferred write) into the cache."""
        self._log.flush(all_builds=True)
        with self._log.engine.connect() as conn:
            rows = list(conn.execute(sa.select(t.atomdetails).where(where)))
        loaded = {
            row.uuid: CachedAtom(row.atom_type, row.flow_uuid, row.book_uuid, row.state, row.doc)
            for row in rows
        }
        with self._cache.lock:
            self._cache.atoms.update(loaded)
        return loaded

    def _known_atom(self, uuid: str) -> CachedAtom | None:
        cached = self._cache.atoms.get(uuid)
        if cached is not None:
            return cached
        self._load(t.atomdetails.c.uuid == uuid)
        return self._cache.atoms.get(uuid)

    def _known_flow(self, uuid: str) -> CachedFlow | None:
        cached = self._cache.flows.get(uuid)
        if cached is not None:
            return cached
        atoms = self._load(t.atomdetails.c.flow_uuid == uuid)  # flushes first
        with self._log.engine.connect() as conn:
            row = conn.execute(sa.select(t.flowdetails).where(t.flowdetails.c.uuid == uuid)).first()
        if row is None:
            return None
        cached = CachedFlow(row.book_uuid, row.state, row.doc, set(atoms))
        with self._cache.lock:
            self._cache.flows[uuid] = cached
        return cached

    # -- writes: stage the whole save, then queue it (and commit if durable) -----------

    def _stage_atom(
        self,
        changes: Changes,
        ad: models.AtomDetail,
        flow_uuid: str,
        book_uuid: str,
        old: CachedAtom | None,
    ) -> None:
        atom_type = models.atom_detail_type(ad)
        raw = ad.to_dict()
        if old is not None and raw == old.doc:
            return  # unchanged (a redacted doc only equals a raw one without secrets)
        doc = redact(raw)
        if old is None:
            payload = {"parent": flow_uuid, "type": atom_type, "set": doc}
            from_state = None
        else:
            # A reset or an override says so: neither is a step of a run.
            marker = atom_marker(atom_type, old.state, ad.state)
            payload = diff(old.doc, doc)
            if not payload:
                return
            payload.update(marker)
            changes.durable |= marker.get(KIND_KEY) == OVERRIDE
            from_state = old.state
        changes.event(
            kind=ATOM,
            build_id=book_uuid,
            subject=ad.uuid,
            name=ad.name,
            from_state=from_state,
            to_state=ad.state,
            payload=payload,
        )
        changes.row(
            "atomdetails",
            old is None,
            {
                "uuid": ad.uuid,
                "flow_uuid": flow_uuid,
                "book_uuid": book_uuid,
                "name": ad.name,
                "atom_type": atom_type,
                "state": ad.state,
                "intention": ad.intention,
                "doc": doc,
            },
        )
        changes.atoms[ad.uuid] = CachedAtom(atom_type, flow_uuid, book_uuid, ad.state, doc)
        if ad.state != from_state and ad.state in DURABLE_STATES:
            changes.durable = True

    def _stage_flow(
        self, changes: Changes, fd: models.FlowDetail, book_uuid: str, old: CachedFlow | None
    ) -> models.FlowDetail:
        """Stage a flow detail and its atoms; return the merged flow (with every atom)."""
        merged = fd.copy(retain_contents=False)
        doc = redact(merged.to_dict())
        self._stage_flow_row(changes, fd, doc, book_uuid, old)
        atoms: set[str] = set() if old is None else set(old.atoms)
        for ad in fd:
            # An atom the flow never had is new: no need to look for it.
            old_atom = self._known_atom(ad.uuid) if ad.uuid in atoms else None
            atom = merge_atom(old_atom, ad) if old_atom is not None else ad
            self._stage_atom(changes, atom, fd.uuid, book_uuid, old_atom)
            merged.add(atom)
        # Atoms saved earlier but absent from this (partial) flow detail.
        for uuid in atoms.difference(ad.uuid for ad in fd):
            cached = self._known_atom(uuid)
            if cached is not None:
                merged.add(cached.detail())
        changes.flows[fd.uuid] = CachedFlow(
            book_uuid, fd.state, doc, atoms.union(ad.uuid for ad in fd)
        )
        return merged

    @staticmethod
    def _stage_flow_row(
        changes: Changes,
        fd: models.FlowDetail,
        doc: dict[str, Any],
        book_uuid: str,
        old: CachedFlow | None,
    ) -> None:
        """Stage the flow's own event and ``flowdetails`` row (none when nothing changed)."""
        row = {"uuid": fd.uuid, "book_uuid": book_uuid, "name": fd.name, "state": fd.state}
        if old is None:
            changes.event(
                kind=FLOW,
                build_id=book_uuid,
                subject=fd.uuid,
                name=fd.name,
                from_state=None,
                to_state=fd.state,
                payload={"parent": book_uuid, "set": doc},
            )
            changes.row("flowdetails", True, {**row, "doc": doc})
            return
        marker = flow_marker(old.state, fd.state)
        if not diff(old.doc, doc):
            return
        # The whole doc, not the change: the row is rewritten whole, and if
        # another writer changed the flow since this process saw it, the
        # log must still say what the row now holds.
        changes.event(
            kind=FLOW,
            build_id=book_uuid,
            subject=fd.uuid,
            name=fd.name,
            from_state=old.state,
            to_state=fd.state,
            payload={"set": doc, **marker},
        )
        changes.row("flowdetails", False, {**row, "doc": doc})
        if marker.get(KIND_KEY) == OVERRIDE or (
            fd.state != old.state and fd.state in FLOW_DURABLE_STATES
        ):
            changes.durable = True

    def _apply(self, changes: Changes, book_uuid: str, *, commit: bool = False) -> None:
        """Write a staged save: committed now if it must be, else queued.

        The cache takes the save only once it is committed or queued, so it
        never runs ahead of the log: a failed commit drops the save whole.
        """
        if commit or changes.durable:
            batch = Batch()
            batch.add(changes.events, changes.rows)
            self._log.commit(book_uuid, batch)
        elif changes.events or changes.rows:
            self._log.defer(book_uuid, changes.events, changes.rows)
        with self._cache.lock:
            self._cache.atoms.update(changes.atoms)
            self._cache.flows.update(changes.flows)

    def update_atom_details(self, atom_detail: models.AtomDetail) -> models.AtomDetail:
        with self._log.reads():
            old = self._known_atom(atom_detail.uuid)
            if old is None:
                raise tf_exc.NotFound(f"No atom details found with uuid '{atom_detail.uuid}'")
            merged = merge_atom(old, atom_detail)
            changes = Changes()
            self._stage_atom(changes, merged, old.flow_uuid, old.book_uuid, old)
            self._apply(changes, old.book_uuid)
            return merged

    def update_flow_details(self, flow_detail: models.FlowDetail) -> models.FlowDetail:
        with self._log.reads():
            old = self._known_flow(flow_detail.uuid)
            if old is None:
                raise tf_exc.NotFound(f"No flow details found with uuid '{flow_detail.uuid}'")
            changes = Changes()
            merged = self._stage_flow(changes, flow_detail, old.book_uuid, old)
            self._apply(changes, old.book_uuid)
            return merged

    def save_logbook(self, book: models.LogBook) -> models.LogBook:
        """Save a logbook and its flows, committed at once (others may look for it)."""
        try:
            return self._save_logbook(book)
        except sa.exc.IntegrityError:
            # Someone else created the same new logbook between our read and our
            # commit (our save was dropped whole): save again, as an update.
            return self._save_logbook(book)

    def _save_logbook(self, book: models.LogBook) -> models.LogBook:
        stored = self._log.projection_doc("logbooks", book.uuid)
        changes = Changes()
        if stored is None:
            doc = redact(book.to_dict(marshal_time=True))
            changes.event(
                kind=LOGBOOK,
                build_id=book.uuid,
                subject=book.uuid,
                name=book.name,
                from_state=None,
                to_state=None,
                payload={"set": doc},
            )
            changes.row("logbooks", True, {"uuid": book.uuid, "name": book.name, "doc": doc})
        else:
            existing = models.LogBook.from_dict(stored, unmarshal_time=True)
            existing.merge(book)
            doc = redact(existing.to_dict(marshal_time=True))
            if diff(stored, doc):
                # The whole doc (as for flows): two savers racing still leave the
                # row and the replayed log equal, whichever commits last.
                changes.event(
                    kind=LOGBOOK,
                    build_id=book.uuid,
                    subject=book.uuid,
                    name=existing.name,
                    from_state=None,
                    to_state=None,
                    payload={"set": doc},
                )
                changes.row(
                    "logbooks", False, {"uuid": book.uuid, "name": existing.name, "doc": doc}
                )
        flows = []
        for fd in book:
            # A new book's flows are new (flows are only ever created with their book).
            old = self._known_flow(fd.uuid) if stored is not None else None
            if old is not None and old.book_uuid != book.uuid:
                raise tf_exc.Duplicate(f"flow {fd.uuid} belongs to logbook {old.book_uuid}")
            flows.append(self._stage_flow(changes, fd, book.uuid, old))
        self._apply(changes, book.uuid, commit=True)
        if stored is not None:
            return self.get_logbook(book.uuid)  # flows saved by others belong to it too
        saved = models.LogBook.from_dict(doc, unmarshal_time=True)
        for flow in flows:
            saved.add(flow)
        return saved

    def destroy_logbook(self, book_uuid: str) -> None:
        with self._log.transaction(book_uuid) as conn:
            gone = conn.execute(sa.delete(t.logbooks).where(t.logbooks.c.uuid == book_uuid))
            if gone.rowcount == 0:
                raise tf_exc.NotFound(f"No logbook found with uuid '{book_uuid}'")
            conn.execute(sa.delete(t.atomdetails).where(t.atomdetails.c.book_uuid == book_uuid))
            conn.execute(sa.delete(t.flowdetails).where(t.flowdetails.c.book_uuid == book_uuid))
            self._log.append(
                conn, kind=LOGBOOK, build_id=book_uuid, subject=book_uuid, to_state="DESTROYED"
            )
        self._backend.forget(book_uuid)

    # -- reads (deferred writes are committed first, so a read sees every save) ------

    def _reader(self) -> sa.Connection:
        with self._log.reads():
            self._log.flush(all_builds=True)
            return self._log.engine.connect()

    def _atoms(self, conn: sa.Connection, flow_uuid: str) -> list[models.AtomDetail]:
        query = sa.select(t.atomdetails).where(t.atomdetails.c.flow_uuid == flow_uuid)
        return [
            models.atom_detail_class(row.atom_type).from_dict(row.doc)
            for row in conn.execute(query)
        ]

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

    def get_flows_for_book(self, book_uuid: str, lazy: bool = False) -> Iterator[models.FlowDetail]:
        with self._reader() as conn:
            flows = self._flows(conn, book_uuid, lazy)
        yield from flows

    def get_flow_details(self, fd_uuid: str, lazy: bool = False) -> models.FlowDetail:
        with self._reader() as conn:
            return self._flow(conn, fd_uuid, lazy)

    def get_atom_details(self, ad_uuid: str) -> models.AtomDetail:
        with self._reader() as conn:
            row = conn.execute(
                sa.select(t.atomdetails).where(t.atomdetails.c.uuid == ad_uuid)
            ).first()
        if row is None:
            raise tf_exc.NotFound(f"No atom details found with uuid '{ad_uuid}'")
        return models.atom_detail_class(row.atom_type).from_dict(row.doc)

    def get_atoms_for_flow(self, fd_uuid: str) -> Iterator[models.AtomDetail]:
        with self._reader() as conn:
            atoms = self._atoms(conn, fd_uuid)
        yield from atoms
