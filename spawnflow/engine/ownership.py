"""One owner per host: a lease row in the database, renewed by a heartbeat.

A second agent for the same host and database refuses to start while the
owner's lease is fresh and its process is alive, so no build is ever resumed
twice. After a kill -9 the owner's pid is gone and the next agent takes over
at once; an owner on a machine that vanished is taken over when its lease
expires.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid

import sqlalchemy as sa

from spawnflow.exceptions import HostOwned
from spawnflow.persistence import tables as t
from spawnflow.persistence.eventlog import EventLog

LOG = logging.getLogger(__name__)
AGENT = "agent"  # event kind


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class HostLease:
    def __init__(self, eventlog: EventLog, host: str, lease_seconds: int):
        self.log = eventlog
        self.host = host
        self.lease_seconds = lease_seconds
        self.agent_id = str(uuid.uuid4())
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        try:
            self._take()
        except sa.exc.IntegrityError:
            # Two agents started at the same instant (PostgreSQL locks no row
            # that does not exist yet): the other one inserted first.
            raise HostOwned(
                f"another spawnflow agent is starting for host {self.host!r} in "
                "this database; refusing to start"
            ) from None
        self._thread = threading.Thread(target=self._heartbeat, name="spawnflow-lease", daemon=True)
        self._thread.start()

    def _take(self) -> None:
        now = time.time()
        with self.log.transaction() as conn:
            query = sa.select(t.agents).where(t.agents.c.host == self.host)
            if conn.dialect.name == "postgresql":
                query = query.with_for_update()
            owner = conn.execute(query).first()
            if owner is not None and owner.agent_id != self.agent_id:
                fresh = now - owner.heartbeat_at < self.lease_seconds
                if fresh and _pid_alive(owner.pid):
                    raise HostOwned(
                        f"another spawnflow agent (pid {owner.pid}, heartbeat "
                        f"{now - owner.heartbeat_at:.0f}s ago) owns host {self.host!r} in this "
                        "database; refusing to start (no build may be resumed twice)"
                    )
                conn.execute(sa.delete(t.agents).where(t.agents.c.host == self.host))
            conn.execute(
                sa.insert(t.agents).values(
                    host=self.host,
                    agent_id=self.agent_id,
                    pid=os.getpid(),
                    started_at=now,
                    heartbeat_at=now,
                )
            )
            self.log.append(
                conn,
                kind=AGENT,
                build_id=None,
                subject=self.agent_id,
                name=self.host,
                to_state="STARTED",
                payload={"pid": os.getpid(), "took_over_from": owner.agent_id if owner else None},
            )

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            try:
                with self.log.transaction() as conn:
                    renewed = conn.execute(
                        sa.update(t.agents)
                        .where(t.agents.c.host == self.host, t.agents.c.agent_id == self.agent_id)
                        .values(heartbeat_at=time.time())
                    ).rowcount
            except sa.exc.SQLAlchemyError:
                LOG.exception("cannot renew the host lease; will retry")
                continue
            if not renewed:
                LOG.error("host lease for %s was taken by another agent", self.host)
                self.lost.set()
                return

    def abandon(self) -> None:
        """Stop renewing without giving the host back: the lease expires by itself,
        or the next agent finds this process gone."""
        self._stop.set()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self.log.transaction() as conn:
            conn.execute(
                sa.delete(t.agents).where(
                    t.agents.c.host == self.host, t.agents.c.agent_id == self.agent_id
                )
            )
            self.log.append(
                conn,
                kind=AGENT,
                build_id=None,
                subject=self.agent_id,
                name=self.host,
                to_state="STOPPED",
                payload={"pid": os.getpid()},
            )
