"""One owner per host: a lease row in the database, renewed by a heartbeat.

A second agent for the same host and database refuses to start while the
owner's lease is fresh, so no build is ever resumed twice. The lease records
who the owner is beyond its pid (node name, boot id, pid namespace, process
start time): only when those say the owner lived here and its process is
gone (kill -9, or the pid now belongs to a process started later) does the
next agent take over at once. An owner that cannot be seen from here (another
machine or container, another pid namespace, a lease from an older spawnflow)
is taken over only once its lease expires.

Each takeover increments the lease's ``epoch`` in one compare-and-set UPDATE,
so of two agents racing for one lease exactly one wins; the epoch never goes
back for a host (a fresh row continues from the last one the log recorded).
The agent keeps its epoch: a renewal that finds another one has lost the
host, and sets ``lost`` without touching the row. ``check`` is what a side
effect asks first: a lease not renewed for most of its length (the process
was stopped, or starved) is renewed right there, so a woken agent finds out it
lost the host before it touches the host again, not at the heartbeat's next
turn.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from spawnflow.exceptions import Fenced, HostOwned, LogUnavailable
from spawnflow.persistence import tables as t
from spawnflow.persistence.eventlog import EventLog
from spawnflow.virt import processes

LOG = logging.getLogger(__name__)
AGENT = "agent"  # event kind
# The part of lease_seconds after a renewal during which ``check`` trusts the
# lease without asking the database (the heartbeat renews every third).
TRUSTED = 2 / 3


def _clock() -> float:
    """Seconds on a clock that runs on while the process is stopped or the machine
    sleeps (CLOCK_BOOTTIME), unlike CLOCK_MONOTONIC across a suspend."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def _owner(row: sa.Row[Any]) -> processes.ProcessIdentity:
    return processes.ProcessIdentity(
        node=row.node,
        boot_id=row.boot_id,
        pid_ns=row.pid_ns,
        pid=row.pid,
        start_time=row.start_time,
    )


def refusal(row: sa.Row[Any], host: str, lease_seconds: int, now: float) -> str | None:
    """Why the lease in ``row`` may not be taken over now (None: it may).

    It may when its heartbeat is older than ``lease_seconds``, or when its
    owner is certainly dead (see ``processes.certainly_dead``).
    """
    age = now - row.heartbeat_at
    if age >= lease_seconds or processes.certainly_dead(_owner(row)):
        return None
    node = row.node or "unknown node"
    return (
        f"another spawnflow agent (node {node}, pid {row.pid}, heartbeat {age:.0f}s ago) "
        f"owns host {host!r} in this database; its lease expires in "
        f"{lease_seconds - age:.0f}s unless renewed; refusing to start (no build may be "
        "resumed twice)"
    )


class HostLease:
    def __init__(self, eventlog: EventLog, host: str, lease_seconds: int):
        self.log = eventlog
        self.host = host
        self.lease_seconds = lease_seconds
        self.agent_id = str(uuid.uuid4())
        self.epoch: int | None = None  # set by acquire
        self.lost = threading.Event()
        # When (``_clock``) the newest transaction that proved our epoch began.
        self._confirmed: float | None = None
        self._renewing = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Called after each renewal that proved the lease (the systemd watchdog
        # and the metrics listen here); they must be quick and must not raise.
        self.on_renewed: list[Callable[[], None]] = []

    def acquire(self) -> None:
        try:
            epoch = self._take()
        except sa.exc.IntegrityError:
            # Two agents started at the same instant (PostgreSQL locks no row
            # that does not exist yet): the other one inserted first.
            raise HostOwned(
                f"another spawnflow agent is starting for host {self.host!r} in "
                "this database; refusing to start"
            ) from None
        # From now on every write of this process proves, in its own
        # transaction, that this lease is still the host's.
        self.log.fence(self.host, epoch)
        self._thread = threading.Thread(target=self._heartbeat, name="spawnflow-lease", daemon=True)
        self._thread.start()

    def _last_epoch(self, conn: sa.Connection) -> int:
        """The epoch of the last agent the log saw start for this host (0: none)."""
        payload = conn.execute(
            sa.select(t.events.c.payload)
            .where(
                t.events.c.build_id.is_(None),
                t.events.c.kind == AGENT,
                t.events.c.name == self.host,
                t.events.c.to_state == "STARTED",
            )
            .order_by(t.events.c.seq.desc())
            .limit(1)
        ).scalar()
        epoch = payload.get("epoch") if isinstance(payload, dict) else None
        return epoch if isinstance(epoch, int) else 0

    def _take(self) -> int:
        started = _clock()
        now = time.time()
        me = processes.this_process()
        values = {
            "agent_id": self.agent_id,
            "pid": me.pid,
            "started_at": now,
            "heartbeat_at": now,
            "node": me.node,
            "boot_id": me.boot_id,
            "pid_ns": me.pid_ns,
            "start_time": me.start_time,
        }
        with self.log.transaction() as conn:
            query = sa.select(t.agents).where(t.agents.c.host == self.host)
            owner = conn.execute(query).first()
            if owner is None:
                epoch = self._last_epoch(conn) + 1
                conn.execute(sa.insert(t.agents).values(host=self.host, epoch=epoch, **values))
            else:
                epoch = self._take_over(conn, owner, now, values)
            self.log.append(
                conn,
                kind=AGENT,
                build_id=None,
                subject=self.agent_id,
                name=self.host,
                to_state="STARTED",
                payload={
                    "pid": me.pid,
                    "took_over_from": owner.agent_id if owner else None,
                    "epoch": epoch,
                    "node": me.node,
                },
            )
        self.epoch = epoch
        self._confirmed = started
        return epoch

    def _take_over(
        self, conn: sa.Connection, owner: sa.Row[Any], now: float, values: dict[str, Any]
    ) -> int:
        """Replace ``owner``'s lease by ours if it may be taken over; returns the new epoch.

        The UPDATE matches the row exactly as it was read (agent, epoch,
        heartbeat): if another agent took over or the owner renewed since,
        nothing is updated and we refuse, so two takers never both win.
        """
        reason = refusal(owner, self.host, self.lease_seconds, now)
        if reason is not None:
            raise HostOwned(reason)
        old = owner.epoch
        epoch = (old if old is not None else self._last_epoch(conn)) + 1
        same_epoch = t.agents.c.epoch.is_(None) if old is None else t.agents.c.epoch == old
        won = conn.execute(
            sa.update(t.agents)
            .where(
                t.agents.c.host == self.host,
                t.agents.c.agent_id == owner.agent_id,
                t.agents.c.heartbeat_at == owner.heartbeat_at,
                same_epoch,
            )
            .values(epoch=epoch, **values)
        ).rowcount
        if won != 1:
            raise HostOwned(
                f"another spawnflow agent took over host {self.host!r} in this database "
                "at the same time; refusing to start (no build may be resumed twice)"
            )
        return epoch

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            try:
                self._renew()
            except Fenced:
                return  # lost
            except (sa.exc.SQLAlchemyError, LogUnavailable) as exc:
                LOG.warning("cannot renew the host lease (%s); will retry", exc)

    def _renew(self) -> None:
        """Renew the lease in a fenced transaction; raise Fenced (and set ``lost``) if
        another agent holds it. One renewal at a time (``check`` renews too)."""
        with self._renewing:
            if self.lost.is_set():
                raise Fenced(f"host {self.host!r}: this agent's lease epoch {self.epoch} is gone")
            started = _clock()
            try:
                with self.log.transaction() as conn:
                    renewed = conn.execute(
                        sa.update(t.agents)
                        .where(
                            t.agents.c.host == self.host,
                            t.agents.c.agent_id == self.agent_id,
                            t.agents.c.epoch == self.epoch,
                        )
                        .values(heartbeat_at=time.time())
                    ).rowcount
            except Fenced:
                renewed = 0
            if renewed:
                late = started - (self._confirmed or started) - self.lease_seconds
                if late > 0:
                    LOG.warning(
                        "host lease for %s renewed %.0fs after it could have expired "
                        "(this process was stopped or starved); it is still ours",
                        self.host,
                        late,
                    )
                self._confirmed = started
                for callback in self.on_renewed:
                    callback()
                return
            LOG.error(
                "host lease for %s was taken by another agent (our epoch %s is gone)",
                self.host,
                self.epoch,
            )
            self.lost.set()
            raise Fenced(f"host {self.host!r}: this agent's lease epoch {self.epoch} is gone")

    def check(self) -> None:
        """Raise Fenced unless this agent may still touch the host; call it before a
        side effect.

        A lease renewed less than ``TRUSTED`` of ``lease_seconds`` ago cannot have
        been taken over (the rest is a margin for clocks and for the call that
        follows), so that costs one clock read. An older one is renewed first,
        here: a process woken from SIGSTOP or a frozen VM learns that it lost
        the host before anything else it does touches the host, rather than
        at its heartbeat's next turn. The clock counts time stopped or asleep.
        Raises LogUnavailable (or the database's error) when the lease cannot be
        confirmed: nothing may be touched then either.
        """
        if self.lost.is_set():
            raise Fenced(f"host {self.host!r}: this agent's lease epoch {self.epoch} is gone")
        confirmed = self._confirmed
        if confirmed is not None and _clock() - confirmed < self.lease_seconds * TRUSTED:
            return
        self._renew()

    def guard(self) -> None:
        """``check``, and once the lease is known gone, the log is fenced at once: nothing
        the caller's build does afterwards is written."""
        try:
            self.check()
        except Fenced:
            self.log.fenced = True
            raise

    def abandon(self) -> None:
        """Stop renewing without giving the host back: the lease expires by itself,
        or the next agent finds this process gone."""
        self._stop.set()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.lost.is_set() or self.log.fenced:
            return  # another agent holds the host now: its lease row is not ours
        with self.log.transaction() as conn:
            conn.execute(
                sa.delete(t.agents).where(
                    t.agents.c.host == self.host,
                    t.agents.c.agent_id == self.agent_id,
                    t.agents.c.epoch == self.epoch,
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
        self.log.fence(self.host, None)
