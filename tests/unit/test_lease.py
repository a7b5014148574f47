"""The host lease: when another agent's lease may be taken over, and its epoch.

Decisions read the real /proc (this machine's boot id, pid namespace and
process start times); processes are real, owners are staged by writing the
lease row the way another agent would have.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from spawnflow.engine.ownership import HostLease
from spawnflow.exceptions import HostOwned
from spawnflow.persistence import db
from spawnflow.persistence import tables as t
from spawnflow.persistence.eventlog import EventLog
from spawnflow.virt import processes

HOST = "cmp-1"
LEASE = 3


@pytest.fixture
def dead() -> processes.ProcessIdentity:
    """A process of this machine that ran and is gone (its pid and start time)."""
    child = subprocess.Popen(["sleep", "60"])
    started = processes.start_time(child.pid)
    child.kill()
    child.wait()
    assert processes.start_time(child.pid) is None
    here = processes.this_process()
    return processes.ProcessIdentity(here.node, here.boot_id, here.pid_ns, child.pid, started)


def stage_owner(log: EventLog, owner: processes.ProcessIdentity, age: float = 0, epoch=7):
    """Write the lease row another agent (``owner``) would hold, heartbeat ``age``s ago."""
    now = time.time()
    with log.transaction() as conn:
        conn.execute(sa.delete(t.agents).where(t.agents.c.host == HOST))
        conn.execute(
            sa.insert(t.agents).values(
                host=HOST,
                agent_id="other-agent",
                pid=owner.pid,
                started_at=now - age,
                heartbeat_at=now - age,
                node=owner.node,
                boot_id=owner.boot_id,
                pid_ns=owner.pid_ns,
                start_time=owner.start_time,
                epoch=epoch,
            )
        )


def lease_row(log: EventLog) -> sa.Row:
    with log.engine.connect() as conn:
        return conn.execute(sa.select(t.agents).where(t.agents.c.host == HOST)).one()


def take(log: EventLog) -> HostLease:
    lease = HostLease(log, HOST, LEASE)
    lease.acquire()
    return lease


CHILD = """
import sys
naive = open("/proc/self/stat").read().split()[21]  # plain comm: fields split on spaces
open("/proc/self/comm", "w").write("a) b (c) d e")
print(naive, flush=True)
sys.stdin.read()
"""


def test_start_time_is_field_22_whatever_the_command_name():
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        naive = int(child.stdout.readline())
        assert ") b (c)" in (processes.PROC / str(child.pid) / "stat").read_text()
        assert processes.start_time(child.pid) == naive >= processes.start_time(os.getpid())
    finally:
        child.communicate("")
    assert processes.start_time(child.pid) is None
    assert not processes.certainly_dead(processes.this_process())


def test_first_lease_records_who_owns_it_and_epoch_1(log):
    lease = take(log)
    row = lease_row(log)
    me = processes.this_process()
    assert (row.pid, row.node, row.boot_id, row.pid_ns) == (me.pid, me.node, me.boot_id, me.pid_ns)
    assert row.start_time == me.start_time
    assert row.epoch == lease.epoch == 1
    lease.release()


def test_live_owner_here_is_refused(log):
    stage_owner(log, processes.this_process())
    with pytest.raises(HostOwned, match="owns host"):
        take(log)


def test_dead_pid_here_is_taken_over_at_once(log, dead):
    stage_owner(log, dead)
    lease = take(log)
    assert lease_row(log).agent_id == lease.agent_id
    assert lease.epoch == 8
    lease.release()


def test_reused_pid_is_taken_over_at_once(log):
    me = processes.this_process()  # a live pid, but not the process that took the lease
    stage_owner(log, processes.ProcessIdentity(me.node, me.boot_id, me.pid_ns, me.pid, 1))
    lease = take(log)
    assert lease.epoch == 8
    lease.release()


@pytest.mark.parametrize(
    "field", ["node", "boot_id", "pid_ns", "all unknown (a lease from before 0006)"]
)
def test_owner_not_seen_from_here_waits_for_expiry(log, dead, field):
    """A dead pid proves nothing about a lease written on another machine, boot or pid
    namespace, or without the identity: it is refused while fresh, taken when expired."""
    if field in ("node", "boot_id", "pid_ns"):
        owner = processes.ProcessIdentity(**{**dead.__dict__, field: "elsewhere"})
    else:
        owner = processes.ProcessIdentity(None, None, None, dead.pid, None)
    stage_owner(log, owner, age=1)
    with pytest.raises(HostOwned) as refused:
        take(log)
    node = owner.node or "unknown node"
    assert f"(node {node}, pid {dead.pid}, heartbeat 1s ago)" in str(refused.value)
    assert "expires in 2s" in str(refused.value)
    assert lease_row(log).agent_id == "other-agent"

    stage_owner(log, owner, age=LEASE)
    lease = take(log)
    assert lease.epoch == 8
    lease.release()


def test_renewal_after_a_takeover_loses_the_lease_and_writes_nothing(log):
    lease = take(log)
    with log.transaction() as conn:  # another agent took over (same row, new epoch)
        conn.execute(sa.update(t.agents).values(epoch=2, heartbeat_at=1.0))
    assert lease.lost.wait(timeout=LEASE * 5)
    row = lease_row(log)
    assert (row.epoch, row.heartbeat_at) == (2, 1.0)
    lease.abandon()


def test_epoch_never_goes_back_after_a_release(log):
    first = take(log)
    first.release()
    second = take(log)
    assert second.epoch == 2
    second.release()


def test_lease_row_from_0005_is_kept_until_it_expires(tmp_path, dead):
    from alembic import command

    url = f"sqlite:///{tmp_path}/old.sqlite"
    engine = db.make_engine(url)
    with engine.begin() as conn:
        command.upgrade(db._alembic_config(conn), "0005")
        conn.execute(
            sa.text(
                "INSERT INTO agents (host, agent_id, pid, started_at, heartbeat_at) "
                "VALUES (:h, 'old-agent', :pid, :now, :now)"
            ),
            {"h": HOST, "pid": dead.pid, "now": time.time()},
        )
    engine.dispose()
    log = EventLog.open(url)
    try:
        assert lease_row(log).epoch is None
        with pytest.raises(HostOwned, match="node unknown node"):
            take(log)
    finally:
        log.close()
