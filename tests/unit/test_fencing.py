"""Fencing: an agent whose host lease another agent took over commits nothing more.

The stale agent is a real ``EventLog`` fenced by a real ``HostLease``; the
takeover is a second ``HostLease`` on its own ``EventLog`` once the first
lease expired (its heartbeat put in the past, as if the agent had been
paused). Every way the stale log writes is tried as the *first* write after
the takeover, so each path's own check inside the transaction is what
refuses it (not the ``fenced`` flag an earlier refusal set). The same tests
run on PostgreSQL from ``tests/integration/test_fencing.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import taskflow.engines
from taskflow.engines.base import Engine
from taskflow.patterns import linear_flow

from spawnflow.engine import ownership
from spawnflow.engine.ownership import HostLease
from spawnflow.exceptions import Fenced
from spawnflow.persistence import lifecycle
from spawnflow.persistence import tables as t
from spawnflow.persistence.backend import EventLogBackend
from spawnflow.persistence.batch import Batch, encode
from spawnflow.persistence.eventlog import EventLog
from tests.unit.conftest import Step, new_build

HOST = "cmp-1"
LEASE = 3


@pytest.fixture
def db_url(url: str) -> str:
    return url  # SQLite here; PostgreSQL in tests/integration/test_fencing.py


def take(log: EventLog) -> HostLease:
    """Acquire the host lease on ``log`` (fencing it) without a heartbeat thread running on."""
    lease = HostLease(log, HOST, LEASE)
    lease.acquire()
    lease.abandon()  # the test moves time itself: no renewal behind its back
    return lease


def expire(log: EventLog) -> None:
    """Put the lease's heartbeat in the past: its owner was paused past its lease."""
    with log.engine.begin() as conn:
        conn.execute(sa.update(t.agents).values(heartbeat_at=time.time() - LEASE - 1))


def dump(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in a stable order."""
    with engine.connect() as conn:
        return {
            table.name: sorted(
                (tuple(row) for row in conn.execute(sa.select(table))), key=lambda r: repr(r)
            )
            for table in t.metadata.sorted_tables
        }


def files(db_url: str) -> dict[str, bytes] | None:
    """The SQLite database's bytes (file and WAL); None on a server database."""
    if not db_url.startswith("sqlite"):
        return None
    path = Path(sa.make_url(db_url).database or "")
    found = (path, path.with_name(path.name + "-wal"))
    return {p.name: p.read_bytes() for p in found if p.exists()}


@dataclass
class Stale:
    """The stale agent (its log, a build it runs, the flow's engine) and the new owner."""

    log: EventLog
    lease: HostLease
    build_id: str
    engine: Engine
    ran: list[str]
    owner_log: EventLog
    owner: HostLease
    checker: sa.Engine

    def snapshot(self, db_url: str) -> tuple[Any, Any]:
        return dump(self.checker), files(db_url)


@pytest.fixture
def stale(db_url: str) -> Iterator[Stale]:
    """A RUNNING build of agent A, its flow loaded; then agent B took A's expired lease."""
    log = EventLog.open(db_url)
    lease = take(log)
    build_id = new_build(log, host=HOST)
    backend = EventLogBackend(eventlog=log)
    book = backend.get_connection().get_logbook(build_id)
    ran: list[str] = []
    engine = taskflow.engines.load(
        linear_flow.Flow("spawn").add(Step("image", hook=lambda: ran.append("image"))),
        flow_detail=next(iter(book)),
        book=book,
        backend=backend,
        engine="serial",
    )
    engine.compile()
    engine.prepare()
    log.transition_build(build_id, lifecycle.RUNNING)

    owner_log = EventLog.open(db_url)
    expire(owner_log)
    owner = take(owner_log)
    assert owner.epoch == lease.epoch + 1
    checker = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    yield Stale(log, lease, build_id, engine, ran, owner_log, owner, checker)
    checker.dispose()
    log.close()
    owner_log.close()


def external_event(build_id: str, tag: str) -> dict[str, Any]:
    """An events row as the batch path takes it (JSON encoded)."""
    row = {
        "build_id": build_id,
        "ts": time.time(),
        "kind": "external",
        "subject": tag,
        "name": "network-vif-plugged",
        "from_state": None,
        "to_state": "completed",
        "payload": {"tag": tag, "status": "completed"},
    }
    return encode(row, t.events)


def write_transition(stale: Stale) -> None:
    stale.log.transition_build(
        stale.build_id, lifecycle.INTERRUPTED, payload={"reason": "stale agent"}
    )


def write_step_running(stale: Stale) -> None:
    stale.engine.run()  # the first step's RUNNING: a batch committed on the DBAPI path


def write_deferred(stale: Stale) -> None:
    stale.log.defer(stale.build_id, [external_event(stale.build_id, "deferred")], [])
    stale.log.flush(stale.build_id)


def write_batch(stale: Stale) -> None:
    batch = Batch()
    batch.add([external_event(stale.build_id, "committed")], [])
    stale.log.commit(stale.build_id, batch)


WRITES = {
    "transition_build": write_transition,
    "step RUNNING": write_step_running,
    "deferred flush": write_deferred,
    "EventLog.commit": write_batch,
}


@pytest.mark.parametrize("first", list(WRITES))
def test_a_fenced_log_commits_nothing_after_a_takeover(stale, db_url, first):
    before = stale.snapshot(db_url)
    assert not stale.log.fenced

    # (TaskFlow replaces the first refusal by the one of its own FAILURE save.)
    with pytest.raises(Fenced, match="lease"):
        WRITES[first](stale)
    assert stale.log.fenced
    assert stale.ran == []  # the step never ran: its RUNNING was not committed
    assert stale.snapshot(db_url) == before

    # Every later write is refused too, and closing the log (which commits
    # whatever is deferred) writes nothing either.
    for name, write in WRITES.items():
        with pytest.raises(Fenced):
            write(stale)
        assert stale.snapshot(db_url) == before, name
    stale.log.close()
    assert stale.snapshot(db_url) == before

    # The new owner writes as usual.
    stale.owner_log.transition_build(stale.build_id, lifecycle.INTERRUPTED)
    assert stale.owner_log.get_build(stale.build_id).state == lifecycle.INTERRUPTED


def later(monkeypatch, seconds: float) -> None:
    """Move the lease's clock on, as a SIGSTOP (or a frozen VM) of ``seconds`` would."""
    real = ownership._clock
    monkeypatch.setattr(ownership, "_clock", lambda: real() + seconds)


def test_check_after_a_pause_finds_the_lease_gone_before_anything_is_touched(
    stale, db_url, monkeypatch
):
    """A woken agent asks ``check`` before its next side effect: past the part of its
    lease it trusts, that is a fenced renewal, which finds the new owner."""
    before = stale.snapshot(db_url)
    stale.lease.check()  # just renewed (acquired): trusted, the database is not asked
    assert not stale.lease.lost.is_set()

    later(monkeypatch, LEASE)
    with pytest.raises(Fenced, match=f"epoch {stale.lease.epoch} is gone"):
        stale.lease.check()
    assert stale.lease.lost.is_set()
    with pytest.raises(Fenced):  # and from now on without asking
        stale.lease.check()
    assert stale.snapshot(db_url) == before  # the new owner's lease row is untouched
    with pytest.raises(Fenced):
        write_transition(stale)


def test_check_after_a_pause_renews_a_lease_nobody_took(db_url, monkeypatch, caplog):
    log = EventLog.open(db_url)
    lease = take(log)
    with log.engine.connect() as conn:
        renewed = conn.execute(sa.select(t.agents.c.heartbeat_at)).scalar_one()
    later(monkeypatch, LEASE * 10)
    lease.check()
    assert not lease.lost.is_set()
    assert "after it could have expired (this process was stopped" in caplog.text
    with log.engine.connect() as conn:
        assert conn.execute(sa.select(t.agents.c.heartbeat_at)).scalar_one() > renewed
    log.close()
