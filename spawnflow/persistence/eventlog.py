"""The append-only event log and the projections kept beside it.

Every write is one transaction that appends an event and updates the
projection it affects, so the two never disagree; ``replay`` rebuilds the
projections from the events alone. The build lifecycle is checked here: an
illegal build transition raises and writes nothing.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from spawnflow.exceptions import SchemaError, UnknownBuild
from spawnflow.persistence import lifecycle, schema
from spawnflow.persistence import tables as t
from spawnflow.persistence.redact import redact

# Event kinds.
BUILD = "build"
LOGBOOK = "logbook"
FLOW = "flow"
ATOM = "atom"
EXTERNAL = "external"


# Built once: constructing statements costs more than executing them here.
_INSERT_EVENT = sa.insert(t.events)
_UPDATE_ATOM = sa.update(t.atomdetails).where(t.atomdetails.c.uuid == sa.bindparam("b_uuid"))


class _Pending:
    """Deferred writes of one build: events in order, atom rows last-wins."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.atoms: dict[str, dict[str, Any]] = {}

    def add(self, event: dict[str, Any], atom_row: dict[str, Any] | None) -> None:
        self.events.append(event)
        if atom_row is not None:
            self.atoms[atom_row["uuid"]] = atom_row

    def write(self, conn: sa.Connection) -> None:
        if self.events:
            conn.execute(_INSERT_EVENT, self.events)
        for uuid, row in self.atoms.items():
            conn.execute(_UPDATE_ATOM, {"b_uuid": uuid, **row})


class EventLog:
    """One database: its engine, the writes that append events, and simple reads.

    Durability points: a write that announces a side effect goes through
    ``transaction(build_id)`` and is committed before the call returns. A write
    that announces nothing new on the host (a result after SUCCESS, progress)
    may be handed to ``defer``; it is written, in order, at the start of the
    build's next transaction, so the log never shows a later event without the
    earlier ones. A crash loses at most the deferred writes of the step that
    just finished, and re-running an idempotent step is always safe.
    """

    def __init__(self, engine: sa.Engine):
        self.engine = engine
        # SQLite allows one writer; serialising our own threads here is cheaper
        # than letting them spin on the busy timeout.
        self._write_lock = threading.Lock() if engine.dialect.name == "sqlite" else None
        self._pending: dict[str | None, _Pending] = {}
        self._pending_lock = threading.Lock()
        # One writer per build at a time: taking a build's deferred writes and
        # committing them is one step, so no later event of that build can
        # commit first (PostgreSQL has no global write lock to ensure it).
        self._build_locks: dict[str | None, threading.Lock] = {}

    @classmethod
    def open(cls, url: str, upgrade: bool = True) -> EventLog:
        """Open ``url``; an empty database is upgraded to head, a foreign or newer one refused."""
        if not upgrade and schema.inspect_url(url) is None:
            shown = sa.engine.make_url(url).render_as_string(hide_password=True)
            raise SchemaError(f"{shown} holds no spawnflow history (empty or missing database)")
        return cls(schema.open_engine(url, upgrade_schema=upgrade))

    def close(self) -> None:
        self.flush(all_builds=True)
        self.engine.dispose()

    def forget_build(self, build_id: str) -> None:
        """Drop the per-build lock of a finished build (a long-lived agent sees many)."""
        with self._pending_lock:
            if build_id not in self._pending:
                self._build_locks.pop(build_id, None)

    @contextlib.contextmanager
    def transaction(self, build_id: str | None = None) -> Iterator[sa.Connection]:
        """A write transaction for one build; committed (and fsynced) when the block ends.

        The build's deferred writes are written first, in the same transaction.
        """
        with self._pending_lock:
            build_lock = self._build_locks.setdefault(build_id, threading.Lock())
        with build_lock, self._write_lock or contextlib.nullcontext():
            with self._pending_lock:
                pending = self._pending.pop(build_id, None)
            try:
                with self.engine.connect() as conn, \
                        conn.execution_options(write=True).begin():
                    if pending is not None:
                        pending.write(conn)
                    yield conn
            except BaseException:
                if pending is not None:
                    with self._pending_lock:  # keep them for the next attempt
                        later = self._pending.get(build_id)
                        if later is not None:
                            pending.events += later.events
                            pending.atoms.update(later.atoms)
                        self._pending[build_id] = pending
                raise

    def defer(self, build_id: str | None, event: dict[str, Any],
              atom_row: dict[str, Any] | None = None) -> None:
        """Queue an event (and the atom row it changes) that announces no side effect.

        ``event`` holds the columns of an events row; ``atom_row`` the full,
        already existing ``atomdetails`` row it updates.
        """
        with self._pending_lock:
            self._pending.setdefault(build_id, _Pending()).add(event, atom_row)

    def flush(self, build_id: str | None = None, *, all_builds: bool = False) -> None:
        """Commit deferred writes now: of one build, or of every build."""
        with self._pending_lock:
            keys = list(self._pending) if all_builds else [build_id]
        for key in keys:
            if key in self._pending:
                with self.transaction(key):
                    pass

    @staticmethod
    def append(conn: sa.Connection, *, kind: str, build_id: str | None, subject: str | None,
               name: str | None = None, from_state: str | None = None,
               to_state: str | None = None, payload: Any = None,
               ts: float | None = None, redacted: bool = False) -> int:
        """Append one event inside ``conn``'s transaction and return its sequence number.

        ``redacted=True`` says the payload was built from already redacted data.
        """
        result = conn.execute(_INSERT_EVENT, {
            "build_id": build_id, "ts": time.time() if ts is None else ts, "kind": kind,
            "subject": subject, "name": name, "from_state": from_state, "to_state": to_state,
            "payload": payload if redacted else redact(payload)})
        return result.inserted_primary_key[0]

    # -- builds -----------------------------------------------------------------

    def create_build(self, build_id: str, *, instance_uuid: str, instance_name: str,
                     host: str, spec: dict[str, Any]) -> None:
        """Record a new build in QUEUED; its first event carries the (redacted) spec."""
        lifecycle.check(None, lifecycle.QUEUED)
        spec = redact(spec)
        now = time.time()
        with self.transaction(build_id) as conn:
            seq = self.append(conn, kind=BUILD, build_id=build_id, subject=build_id,
                              name=instance_name, to_state=lifecycle.QUEUED, ts=now,
                              redacted=True,
                              payload={"spec": spec, "host": host,
                                       "instance_uuid": instance_uuid})
            conn.execute(sa.insert(t.builds).values(
                build_id=build_id, instance_uuid=instance_uuid, instance_name=instance_name,
                host=host, state=lifecycle.QUEUED, created_at=now, updated_at=now, spec=spec,
                error=None, last_seq=seq))

    def transition_build(self, build_id: str, to_state: str, *, error: str | None = None,
                         payload: dict[str, Any] | None = None) -> str:
        """Move a build to ``to_state`` if the lifecycle allows it; return the old state."""
        with self.transaction(build_id) as conn:
            query = sa.select(t.builds.c.state, t.builds.c.instance_name).where(
                t.builds.c.build_id == build_id)
            if conn.dialect.name == "postgresql":
                query = query.with_for_update()
            row = conn.execute(query).first()
            if row is None:
                raise UnknownBuild(f"no build {build_id}")
            lifecycle.check(row.state, to_state)
            body = dict(payload or {})
            if error is not None:
                body["error"] = error
            now = time.time()
            seq = self.append(conn, kind=BUILD, build_id=build_id, subject=build_id,
                              name=row.instance_name, from_state=row.state, to_state=to_state,
                              payload=body or None, ts=now)
            values: dict[str, Any] = {"state": to_state, "updated_at": now, "last_seq": seq}
            if error is not None:
                values["error"] = error
            conn.execute(sa.update(t.builds).where(t.builds.c.build_id == build_id)
                         .values(**values))
            return row.state

    def get_build(self, build_id: str) -> sa.Row:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t.builds).where(t.builds.c.build_id == build_id)).first()
        if row is None:
            raise UnknownBuild(f"no build {build_id} in this database")
        return row

    def builds(self, *, host: str | None = None, states: frozenset[str] | None = None,
               instance_uuid: str | None = None) -> list[sa.Row]:
        query = sa.select(t.builds).order_by(t.builds.c.created_at)
        if host is not None:
            query = query.where(t.builds.c.host == host)
        if states is not None:
            query = query.where(t.builds.c.state.in_(sorted(states)))
        if instance_uuid is not None:
            query = query.where(t.builds.c.instance_uuid == instance_uuid)
        with self.engine.connect() as conn:
            return list(conn.execute(query))

    # -- external events (network-vif-plugged) ------------------------------------

    def record_external_event(self, build_id: str, name: str, tag: str, status: str) -> int:
        """Persist an external event before anyone acts on it (so none is lost)."""
        with self.transaction(build_id) as conn:
            return self.append(conn, kind=EXTERNAL, build_id=build_id, subject=tag, name=name,
                               to_state=status, payload={"tag": tag, "status": status})

    def external_events(self, build_id: str) -> list[sa.Row]:
        query = (sa.select(t.events).where(t.events.c.build_id == build_id,
                                           t.events.c.kind == EXTERNAL)
                 .order_by(t.events.c.seq))
        with self.engine.connect() as conn:
            return list(conn.execute(query))

    def events(self, build_id: str) -> list[sa.Row]:
        query = sa.select(t.events).where(t.events.c.build_id == build_id).order_by(t.events.c.seq)
        with self.engine.connect() as conn:
            return list(conn.execute(query))
