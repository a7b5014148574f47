"""Prompt pick-up of queued work on PostgreSQL: NOTIFY when queuing, LISTEN in the agent.

The transaction that queues a build for host H also sends ``NOTIFY`` on H's
channel (``channel(H)``): PostgreSQL delivers it when, and only if, that
transaction commits, so an agent is never woken for a build it cannot see
yet. The agent of H ``LISTEN``\\s on a connection of its own and wakes at once;
its slow poll (``[DEFAULT] queue_poll_interval``) stays the backstop for a
notification lost with that connection (a PostgreSQL restart), and is the
only mechanism on SQLite, which has no notifications.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from typing import Any

import sqlalchemy as sa

from spawnflow.persistence import db

LOG = logging.getLogger(__name__)
CHANNEL_PREFIX = "spawnflow_q_"
# Seconds between attempts to listen again after the connection broke.
RELISTEN_DELAY = 2.0


def channel(host: str) -> str:
    """Host ``host``'s channel: a digest, as a host name may be longer than an
    identifier (63 bytes) and hold any character."""
    return CHANNEL_PREFIX + hashlib.sha256(host.encode()).hexdigest()[:24]


def notify_queued(conn: sa.Connection, host: str, build_id: str) -> None:
    """Inside the queuing transaction: wake ``host``'s agent once it commits."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_notify(:c, :b)"), {"c": channel(host), "b": build_id})


class QueueWaiter:
    """Waits for work queued for one host: a notification on PostgreSQL, else the poll."""

    def __init__(self, url: str, host: str) -> None:
        parsed = db.parse_url(url)
        self.channel = channel(host)
        self._conninfo: str | None = None
        if parsed.get_backend_name() == "postgresql":
            self._conninfo = parsed.set(drivername="postgresql").render_as_string(
                hide_password=False
            )
        self._conn: Any = None
        self._next_try = 0.0
        self.woken = 0  # notifications received (the bench and tests read it)

    @property
    def listening(self) -> bool:
        return self._conn is not None

    def wait(self, timeout: float, stop: threading.Event) -> bool:
        """Block up to ``timeout`` s, or until work is queued or ``stop`` is set; True
        when a notification came (the caller looks for work either way)."""
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            conn = self._listen()
            if conn is None:
                stop.wait(min(left, 0.5))
                continue
            try:
                # Short slices: a stop is seen within half a second.
                if any(True for _ in conn.notifies(timeout=min(left, 0.5), stop_after=1)):
                    self._drain(conn)
                    self.woken += 1
                    return True
            except Exception as exc:  # the connection broke: poll until it is back
                LOG.warning("queue notifications lost (%s); polling until they are back", exc)
                self._drop()
        return False

    def _drain(self, conn: Any) -> None:
        """Swallow the other notifications already there: one look for work finds all."""
        for _ in conn.notifies(timeout=0, stop_after=1000):
            pass

    def _listen(self) -> Any:
        if self._conn is not None or self._conninfo is None:
            return self._conn
        if time.monotonic() < self._next_try:
            return None
        import psycopg  # only an agent on PostgreSQL needs it

        try:
            conn = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5)
            conn.execute(f'LISTEN "{self.channel}"')  # a digest: no quoting to escape
        except psycopg.Error as exc:
            LOG.warning("cannot listen for queued builds (%s); polling", db.first_line(exc))
            self._next_try = time.monotonic() + RELISTEN_DELAY
            return None
        self._conn = conn
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._next_try = time.monotonic() + RELISTEN_DELAY
        if conn is not None:
            try:
                conn.close()
            except Exception as exc:  # closing a broken connection: nothing to do
                LOG.debug("closing the listening connection: %s", exc)

    def close(self) -> None:
        self._drop()
