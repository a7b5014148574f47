"""How writes reach the database: per-build order, deferred writes, faults, the fence.

Durability points: a write that announces a side effect goes through
``transaction(build_id)`` and is committed before the call returns. A write
that announces nothing new on the host (a result after SUCCESS, progress)
may be handed to ``defer``; it is written, in order, at the start of the
build's next transaction, so the log never shows a later event without the
earlier ones. A crash loses at most the deferred writes of the step that
just finished, and re-running an idempotent step is always safe.

Faults: a write that fails because the log is unavailable (``faults``)
*holds* its build: every later write of that build is refused at once
(LogUnavailable) without touching the database, so nothing the engine does
after the failure (TaskFlow marks its flow FAILURE on the way out) can reach
the log; the deferred writes stay queued, and ``release`` commits them once
the log answers. An agent ``fence``s the log with its lease epoch: every
write transaction then checks, inside itself, that the epoch is still the
host's, and aborts (Fenced) otherwise.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from spawnflow.exceptions import Fenced, LogUnavailable, PersistenceError
from spawnflow.persistence import db, faults
from spawnflow.persistence import tables as t
from spawnflow.persistence.batch import Batch, Statements


class LogWriter:
    """The write side of one database: transactions, deferred writes, held builds, fence."""

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
        self._held: dict[str, str] = {}  # build id -> why its writes are held
        self._fence: tuple[str, int] | None = None
        self.fenced = False  # set once a write found our epoch gone; nothing is written after
        self._closed = False  # set by close(): a late writer fails, it never reopens the pool
        self._local = threading.local()  # .build_id: the build this thread runs (``running``)

    def close(self) -> None:
        """Commit every deferred write, then release the database.

        A commit in flight finishes first (the write lock); any write after
        this fails with PersistenceError rather than reopening the pool.
        """
        self.flush(all_builds=True)
        with self._write_lock or contextlib.nullcontext():
            self._closed = True
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            self.engine.dispose()

    def close_quietly(self) -> None:
        """``close``, dropping deferred writes the log cannot take now (they re-run)."""
        try:
            self.flush(all_builds=True)
        except Exception as exc:
            if not (isinstance(exc, LogUnavailable) or faults.unavailable(exc)):
                raise
        with self._pending_lock:
            self._pending.clear()
        self.close()

    def _refuse_closed(self) -> None:
        if self._closed:
            raise PersistenceError("the event log is closed; nothing more is written")

    def forget_build(self, build_id: str) -> None:
        """Drop the per-build lock of a finished build (a long-lived agent sees many)."""
        with self._pending_lock:
            if build_id not in self._pending:
                self._build_locks.pop(build_id, None)
                self._held.pop(build_id, None)

    # -- faults: held builds and the fence ----------------------------------------

    def fence(self, host: str, epoch: int | None) -> None:
        """Make every later write transaction check that ``host``'s lease carries ``epoch``
        (None: stop checking, the lease was given back)."""
        self._fence = None if epoch is None else (host, epoch)

    def held(self, build_id: str) -> str | None:
        """Why the build's writes are held (None: they are not)."""
        return self._held.get(build_id)

    def release(self, build_id: str) -> None:
        """Commit the held build's deferred writes; on success its writes flow again.

        Raises LogUnavailable (still held) while the log cannot take them.
        A commit whose answer was lost (the server went away during COMMIT)
        may have happened: if the first queued event is already in the log,
        the whole batch is (a transaction is all or nothing) and it is not
        written twice.
        """
        try:
            self._drop_if_committed(build_id)
        except Exception as exc:
            self._failed(build_id, exc)
            raise
        self._commit(build_id, release=True)
        with self._pending_lock:
            self._held.pop(build_id, None)

    def _drop_if_committed(self, build_id: str) -> None:
        with self._pending_lock:
            batch = self._pending.get(build_id)
        if batch is None or not batch.events:
            return
        first = batch.events[0]
        query = (
            sa.select(t.events.c.seq)
            .where(
                t.events.c.build_id == build_id,
                t.events.c.ts == first["ts"],
                t.events.c.kind == first["kind"],
                t.events.c.subject == first["subject"],
            )
            .limit(1)
        )
        with self.engine.connect() as conn:
            found = conn.execute(query).first()
        if found is not None:
            self._take(build_id)

    def hold(self, build_id: str | None, exc: BaseException) -> None:
        """Hold the build when ``exc`` (a read for it) says the log is unavailable, as a
        failed write would: raises LogUnavailable then; returns for any other error."""
        self._failed(build_id, exc)

    def _refuse_held(self, build_id: str | None) -> None:
        self._refuse_closed()
        if self.fenced:
            raise Fenced("this agent lost its host lease; it writes nothing more")
        reason = self._held.get(build_id) if build_id is not None else None
        if reason is not None:
            raise LogUnavailable(
                f"build {build_id}: writes held since the event log failed ({reason})"
            )

    @contextlib.contextmanager
    def running(self, build_id: str) -> Iterator[None]:
        """This thread runs ``build_id``: an unavailable log met by any read or write
        made here (another build's deferred writes flushed before a read, a read
        inside a save) holds it too, so nothing its engine does next is written."""
        # Nested (a delete rolls a spawn back in its own thread): the outer
        # build is the thread's again afterwards.
        outer = getattr(self._local, "build_id", None)
        self._local.build_id = build_id
        try:
            yield
        finally:
            self._local.build_id = outer

    @contextlib.contextmanager
    def reads(self) -> Iterator[None]:
        """Reads for the thread's build: an unavailable log holds it (LogUnavailable)."""
        try:
            yield
        except Exception as exc:
            self._failed(None, exc)
            raise

    def _failed(self, build_id: str | None, exc: BaseException) -> None:
        """Turn an unavailable-log error into LogUnavailable, holding the build (and the
        build this thread runs, see ``running``)."""
        if isinstance(exc, Fenced) or not (
            isinstance(exc, LogUnavailable) or faults.unavailable(exc)
        ):
            return
        cause = exc.__cause__ if isinstance(exc, LogUnavailable) else None
        reason = db.first_line(cause or exc)
        current = getattr(self._local, "build_id", None)
        with self._pending_lock:
            for held in {build_id, current} - {None}:
                self._held.setdefault(str(held), reason)
        if isinstance(exc, LogUnavailable):
            raise exc
        raise LogUnavailable(f"the event log is unavailable: {reason}") from exc

    def _check_fence(self, cursor: Any) -> None:
        """Inside the caller's transaction: abort unless our lease epoch is current."""
        if self._fence is None:
            return
        cursor.execute(self._sql.fence, {"fence_host": self._fence[0]})
        self._check_fenced_row(cursor)

    def _check_fenced_row(self, cursor: Any) -> None:
        """Raise Fenced unless the fence query on ``cursor`` found our epoch."""
        if self._fence is None:
            return
        host, epoch = self._fence
        row = cursor.fetchone()
        if row is None or row[0] != epoch:
            self.fenced = True
            raise Fenced(
                f"host {host!r}: this agent's lease epoch {epoch} is gone "
                f"(now {row[0] if row else 'none'}); another agent owns the host"
            )

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
    def transaction(
        self, build_id: str | None = None, *, from_outside: bool = False
    ) -> Iterator[sa.Connection]:
        """A write transaction for one build; committed (and fsynced) when the block ends.

        The build's deferred writes are written first, in the same transaction.
        ``from_outside``: a write that does not come from the build's own run
        (an external event, a cancel) goes through even while the build is
        held: its queued writes all predate the failure, so committing them
        first keeps the build's order, and an operator's cancel or a
        network-vif-plugged is never refused because the log failed earlier.
        """
        if self.fenced or not from_outside:
            self._refuse_held(build_id)
        elif build_id is not None and build_id in self._held:
            # Its queued writes may be a batch whose commit answer was lost.
            with self.reads():
                self._drop_if_committed(build_id)
        with self._build_lock(build_id), self._write_lock or contextlib.nullcontext():
            self._refuse_closed()
            batch = self._take(build_id)
            try:
                with self.engine.connect() as conn, conn.execution_options(write=True).begin():
                    cursor = conn.connection.cursor()
                    try:
                        self._check_fence(cursor)
                        if batch is not None:
                            batch.write(cursor, self._sql)
                    finally:
                        cursor.close()
                    yield conn
            except BaseException as exc:
                if batch is not None:
                    self._give_back(build_id, batch)
                self._failed(build_id, exc)
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
        self._refuse_held(build_id)
        with self._pending_lock:
            self._pending.setdefault(build_id, Batch()).add(events, rows)

    def flush(self, build_id: str | None = None, *, all_builds: bool = False) -> None:
        """Commit deferred writes now: of one build, or of every build."""
        if all_builds and self.fenced:
            return  # another agent owns the host: what is queued here is not ours to write
        with self._pending_lock:
            # Held builds wait for ``release`` (or the next start): a flush of
            # everything (before a read, at close) leaves them queued.
            keys = [k for k in self._pending if k not in self._held] if all_builds else [build_id]
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

    def _commit(
        self, build_id: str | None, extra: Batch | None = None, *, release: bool = False
    ) -> None:
        """Commit one build's deferred writes (and ``extra``) in a transaction of their own.

        The hot path (every step's RUNNING ends here): straight on the DBAPI
        connection, no statement compiling, one fsync. On failure the
        deferred writes go back to the queue (first at the next attempt).
        A held build is refused unless this is its ``release``, which commits
        even an empty transaction: it must prove the log takes writes again.
        """
        if not release:
            self._refuse_held(build_id)
        with self._build_lock(build_id), self._write_lock or contextlib.nullcontext():
            self._refuse_closed()
            batch = self._take(build_id)
            if batch is None and extra is None and not release:
                return
            dbapi_error = self.engine.dialect.loaded_dbapi.Error
            try:
                self._write_raw([b for b in (batch, extra) if b is not None])
            except dbapi_error as exc:
                if batch is not None:
                    self._give_back(build_id, batch)
                # The same exception types as every other write (callers catch those).
                wrapped = sa.exc.DBAPIError.instance(
                    "deferred writes",
                    None,
                    exc,
                    dbapi_error,
                    hide_parameters=True,
                    dialect=self.engine.dialect,
                )
                self._failed(build_id, wrapped)
                raise wrapped from exc
            except BaseException as exc:
                if batch is not None:
                    self._give_back(build_id, batch)
                self._failed(build_id, exc)
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
            # The fence goes first (it takes the lease row's share lock), and
            # is answered before the commit; psycopg's pipeline sends it and
            # the batch in one round trip, not one each.
            fence = raw.cursor()
            with raw.driver_connection.pipeline() if self._pipeline else contextlib.nullcontext():
                if self._fence is not None:
                    host, _epoch = self._fence
                    fence.execute(self._sql.fence, {"fence_host": host})
                for batch in batches:
                    batch.write(cursor, self._sql)
            self._check_fenced_row(fence)
            fence.close()
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
