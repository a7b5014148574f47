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
from typing import Any, cast

import sqlalchemy as sa

from spawnflow.exceptions import PersistenceError, SchemaError, UnknownBuild
from spawnflow.persistence import db, lifecycle
from spawnflow.persistence import tables as t
from spawnflow.persistence.batch import Batch, Statements
from spawnflow.persistence.redact import mask_url, redact

# Event kinds.
BUILD = "build"
LOGBOOK = "logbook"
FLOW = "flow"
ATOM = "atom"
EXTERNAL = "external"


# Built once: constructing statements costs more than executing them here.
_INSERT_EVENT = sa.insert(t.events)


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
        self._sql = Statements(engine.dialect)
        self._sqlite = engine.dialect.name == "sqlite"
        self._pipeline = engine.dialect.driver == "psycopg"
        self._writer: Any = None  # SQLite: the DBAPI connection kept for ``_commit``
        # SQLite allows one writer; serialising our own threads here is cheaper
        # than letting them spin on the busy timeout.
        self._write_lock = threading.Lock() if engine.dialect.name == "sqlite" else None
        self._pending: dict[str | None, Batch] = {}
        self._pending_lock = threading.Lock()
        # One writer per build at a time: taking a build's deferred writes and
        # committing them is one step, so no later event of that build can
        # commit first (PostgreSQL has no global write lock to ensure it).
        self._build_locks: dict[str | None, threading.Lock] = {}

    @classmethod
    def open(cls, url: str, upgrade: bool = True) -> EventLog:
        """Open ``url``; an empty database is upgraded to head, a foreign or newer one refused.

        A malformed URL is a PersistenceError showing it masked (no password).
        """
        try:
            if not upgrade and db.inspect_url(url) is None:
                raise SchemaError(
                    f"{mask_url(url)} holds no spawnflow history (empty or missing database)"
                )
            return cls(db.open_engine(url, upgrade_schema=upgrade))
        except sa.exc.ArgumentError as exc:
            raise PersistenceError(f"not a database URL: {mask_url(url)} ({exc})") from None

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Commit every deferred write, then release the database."""
        self.flush(all_builds=True)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.engine.dispose()

    def forget_build(self, build_id: str) -> None:
        """Drop the per-build lock of a finished build (a long-lived agent sees many)."""
        with self._pending_lock:
            if build_id not in self._pending:
                self._build_locks.pop(build_id, None)

    def _build_lock(self, build_id: str | None) -> threading.Lock:
        with self._pending_lock:
            return self._build_locks.setdefault(build_id, threading.Lock())

    def _take(self, build_id: str | None) -> Batch | None:
        with self._pending_lock:
            return self._pending.pop(build_id, None)

    def _give_back(self, build_id: str | None, batch: Batch) -> None:
        """Return a batch whose commit failed: it goes first at the next attempt."""
        with self._pending_lock:
            later = self._pending.get(build_id)
            if later is not None:
                batch.extend(later)
            self._pending[build_id] = batch

    @contextlib.contextmanager
    def transaction(self, build_id: str | None = None) -> Iterator[sa.Connection]:
        """A write transaction for one build; committed (and fsynced) when the block ends.

        The build's deferred writes are written first, in the same transaction.
        """
        with self._build_lock(build_id), self._write_lock or contextlib.nullcontext():
            batch = self._take(build_id)
            try:
                with self.engine.connect() as conn, conn.execution_options(write=True).begin():
                    if batch is not None:
                        cursor = conn.connection.cursor()
                        try:
                            batch.write(cursor, self._sql)
                        finally:
                            cursor.close()
                    yield conn
            except BaseException:
                if batch is not None:
                    self._give_back(build_id, batch)
                raise

    def defer(
        self,
        build_id: str | None,
        events: list[dict[str, Any]],
        rows: list[tuple[str, bool, dict[str, Any]]],
    ) -> None:
        """Queue events (and the projection rows they change) that announce no side effect.

        ``events`` hold the columns of events rows (payloads redacted, JSON-encoded);
        ``rows`` are ``(table name, is insert, full row)`` of a projection, encoded the
        same way (``batch.encode``).
        """
        with self._pending_lock:
            self._pending.setdefault(build_id, Batch()).add(events, rows)

    def flush(self, build_id: str | None = None, *, all_builds: bool = False) -> None:
        """Commit deferred writes now: of one build, or of every build."""
        with self._pending_lock:
            keys = list(self._pending) if all_builds else [build_id]
        for key in keys:
            self._commit(key)

    def projection_doc(self, table: str, uuid: str) -> dict[str, Any] | None:
        """The committed ``doc`` of one projection row (None: no such row).

        A plain DBAPI read: the backend asks this once per logbook save.
        """
        raw = self.engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute(self._sql.select_doc[table], {"uuid": uuid})
            row = cursor.fetchone()
            cursor.close()
            raw.rollback()  # end the read (PostgreSQL opened a transaction)
        finally:
            raw.close()
        return None if row is None else t.load_json(row[0])

    def commit(self, build_id: str | None, batch: Batch) -> None:
        """Commit ``batch`` now, after the build's deferred writes, in one transaction.

        If the commit fails, the deferred writes stay queued and ``batch`` is
        dropped: the caller's save did not happen.
        """
        self._commit(build_id, batch)

    def _commit(self, build_id: str | None, extra: Batch | None = None) -> None:
        """Commit one build's deferred writes (and ``extra``) in a transaction of their own.

        The hot path (every step's RUNNING ends here): straight on the DBAPI
        connection, no statement compiling, one fsync. On failure the
        deferred writes go back to the queue (first at the next attempt).
        """
        with self._build_lock(build_id), self._write_lock or contextlib.nullcontext():
            batch = self._take(build_id)
            if batch is None and extra is None:
                return
            dbapi_error = self.engine.dialect.loaded_dbapi.Error
            try:
                self._write_raw([b for b in (batch, extra) if b is not None])
            except dbapi_error as exc:
                if batch is not None:
                    self._give_back(build_id, batch)
                # The same exception types as every other write (callers catch those).
                raise sa.exc.DBAPIError.instance(
                    "deferred writes",
                    None,
                    exc,
                    dbapi_error,
                    hide_parameters=True,
                    dialect=self.engine.dialect,
                ) from exc
            except BaseException:
                if batch is not None:
                    self._give_back(build_id, batch)
                raise

    def _write_raw(self, batches: list[Batch]) -> None:
        """Write ``batches`` in one transaction on a DBAPI connection and commit.

        SQLite keeps that connection for the next commit (the write lock makes
        this process's writer one at a time, so no pool round trip); a
        connection that failed is invalidated, never kept.
        """
        raw: Any = self._writer or self.engine.raw_connection()
        try:
            cursor = raw.cursor()
            if self._sqlite:
                cursor.execute("BEGIN IMMEDIATE")
            # psycopg's pipeline sends the batch in one round trip, not one each.
            with raw.driver_connection.pipeline() if self._pipeline else contextlib.nullcontext():
                for batch in batches:
                    batch.write(cursor, self._sql)
            cursor.close()
            raw.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                raw.rollback()
            # A connection in an unknown state is not kept for the next commit.
            if raw is self._writer:
                self._writer = None
            raw.invalidate()
            raise
        if self._sqlite:
            self._writer = raw
        else:
            raw.close()

    @staticmethod
    def append(
        conn: sa.Connection,
        *,
        kind: str,
        build_id: str | None,
        subject: str | None,
        name: str | None = None,
        from_state: str | None = None,
        to_state: str | None = None,
        payload: Any = None,
        ts: float | None = None,
        redacted: bool = False,
    ) -> int:
        """Append one event inside ``conn``'s transaction and return its sequence number.

        ``redacted=True`` says the payload was built from already redacted data.
        """
        result = conn.execute(
            _INSERT_EVENT,
            {
                "build_id": build_id,
                "ts": time.time() if ts is None else ts,
                "kind": kind,
                "subject": subject,
                "name": name,
                "from_state": from_state,
                "to_state": to_state,
                "payload": payload if redacted else redact(payload),
            },
        )
        # Never None after an insert (SQLAlchemy types it optional).
        return int(cast(Any, result.inserted_primary_key)[0])

    # -- builds -----------------------------------------------------------------

    def create_build(
        self,
        build_id: str,
        *,
        instance_uuid: str,
        instance_name: str,
        host: str,
        spec: dict[str, Any],
    ) -> None:
        """Record a new build in QUEUED; its first event carries the (redacted) spec."""
        lifecycle.check(None, lifecycle.QUEUED)
        spec = redact(spec)
        now = time.time()
        with self.transaction(build_id) as conn:
            seq = self.append(
                conn,
                kind=BUILD,
                build_id=build_id,
                subject=build_id,
                name=instance_name,
                to_state=lifecycle.QUEUED,
                ts=now,
                redacted=True,
                payload={"spec": spec, "host": host, "instance_uuid": instance_uuid},
            )
            conn.execute(
                sa.insert(t.builds).values(
                    build_id=build_id,
                    instance_uuid=instance_uuid,
                    instance_name=instance_name,
                    host=host,
                    state=lifecycle.QUEUED,
                    created_at=now,
                    updated_at=now,
                    spec=spec,
                    error=None,
                    last_seq=seq,
                )
            )

    def transition_build(
        self,
        build_id: str,
        to_state: str,
        *,
        error: str | None = None,
        payload: dict[str, Any] | None = None,
    ) -> str:
        """Move a build to ``to_state`` if the lifecycle allows it; return the old state."""
        with self.transaction(build_id) as conn:
            query = sa.select(t.builds.c.state, t.builds.c.instance_name).where(
                t.builds.c.build_id == build_id
            )
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
            seq = self.append(
                conn,
                kind=BUILD,
                build_id=build_id,
                subject=build_id,
                name=row.instance_name,
                from_state=row.state,
                to_state=to_state,
                payload=body or None,
                ts=now,
            )
            values: dict[str, Any] = {"state": to_state, "updated_at": now, "last_seq": seq}
            if error is not None:
                values["error"] = error
            conn.execute(
                sa.update(t.builds).where(t.builds.c.build_id == build_id).values(**values)
            )
            return str(row.state)

    def get_build(self, build_id: str) -> sa.Row[Any]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t.builds).where(t.builds.c.build_id == build_id)).first()
        if row is None:
            raise UnknownBuild(f"no build {build_id} in this database")
        return row

    def builds(
        self,
        *,
        host: str | None = None,
        states: frozenset[str] | None = None,
        instance_uuid: str | None = None,
    ) -> list[sa.Row[Any]]:
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
            return self.append(
                conn,
                kind=EXTERNAL,
                build_id=build_id,
                subject=tag,
                name=name,
                to_state=status,
                payload={"tag": tag, "status": status},
            )

    def external_events(self, build_id: str) -> list[sa.Row[Any]]:
        query = (
            sa.select(t.events)
            .where(t.events.c.build_id == build_id, t.events.c.kind == EXTERNAL)
            .order_by(t.events.c.seq)
        )
        with self.engine.connect() as conn:
            return list(conn.execute(query))

    def events(self, build_id: str) -> list[sa.Row[Any]]:
        query = sa.select(t.events).where(t.events.c.build_id == build_id).order_by(t.events.c.seq)
        with self.engine.connect() as conn:
            return list(conn.execute(query))
