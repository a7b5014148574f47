"""The host lease between real processes: another pid namespace, and racing takers.

An owner in another pid namespace (``unshare --pid --fork --mount-proc``)
records a pid that means nothing here; it must be kept until its lease
expires, never taken over because that pid looks dead (or alive) from here.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from spawnflow.engine.ownership import HostLease
from spawnflow.exceptions import HostOwned
from spawnflow.persistence import tables as t
from spawnflow.persistence.eventlog import EventLog
from spawnflow.virt import processes
from tests.integration.test_persistence_backends import drop_pg_database, fresh_pg_database

pytestmark = pytest.mark.integration

HOST = "cmp-1"
LEASE = 3
REPO = Path(__file__).resolve().parents[2]

# Runs as pid 1 of a new pid namespace; forks the lease holder at a chosen pid
# (one no process has outside), so that nothing but the namespace check can
# keep the lease: from outside, that pid is simply not there.
HOLDER = """
import os, sys, time
sys.path.insert(0, {repo!r})
with open("/proc/sys/kernel/ns_last_pid", "w") as f:
    f.write(str({pid} - 1))
if os.fork() == 0:
    from spawnflow.engine.ownership import HostLease
    from spawnflow.persistence.eventlog import EventLog
    HostLease(EventLog.open({url!r}), {host!r}, {lease}).acquire()
    print(os.getpid(), flush=True)
    time.sleep(3600)
os.wait()
"""


def free_pid() -> int:
    """A pid no process of this namespace has."""
    pid = int((processes.PROC / "sys/kernel/pid_max").read_text()) - 1
    while (processes.PROC / str(pid)).exists():
        pid -= 1
    return pid


def lease_row(log: EventLog) -> sa.Row:
    with log.engine.connect() as conn:
        return conn.execute(sa.select(t.agents).where(t.agents.c.host == HOST)).one()


def test_owner_in_another_pid_namespace_is_kept_until_its_lease_expires(tmp_path):
    url = f"sqlite:///{tmp_path}/log.sqlite"
    log = EventLog.open(url)
    pid = free_pid()
    script = HOLDER.format(repo=str(REPO), pid=pid, url=url, host=HOST, lease=LEASE)
    holder = subprocess.Popen(
        [
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            sys.executable,
            "-c",
            script,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert int(holder.stdout.readline()) == pid
        row = lease_row(log)
        assert row.pid == pid and row.pid_ns != processes.pid_namespace()
        assert processes.start_time(pid) is None  # dead, as far as this namespace can see
        with pytest.raises(HostOwned, match=f"pid {pid}, heartbeat"):
            HostLease(log, HOST, LEASE).acquire()
    finally:
        holder.kill()
        holder.wait()
    with log.transaction() as conn:  # as if renewed just before it died
        conn.execute(sa.update(t.agents).values(heartbeat_at=time.time()))
    with pytest.raises(HostOwned, match="expires in"):
        HostLease(log, HOST, LEASE).acquire()

    lease = HostLease(log, HOST, LEASE)
    for _ in range(200):
        try:
            lease.acquire()
            break
        except HostOwned:
            time.sleep(0.1)
    assert lease_row(log).agent_id == lease.agent_id
    assert lease.epoch == row.epoch + 1
    lease.release()
    log.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path, postgres_url):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/race.sqlite"
        return
    url = fresh_pg_database(postgres_url)
    yield url
    drop_pg_database(url)


def test_racing_takers_of_an_expired_lease_one_wins(db_url):
    log = EventLog.open(db_url)
    old = HostLease(log, HOST, LEASE)
    old.acquire()
    old.abandon()
    with log.transaction() as conn:  # expired
        conn.execute(sa.update(t.agents).values(heartbeat_at=time.time() - LEASE - 1))
    takers = [HostLease(EventLog.open(db_url), HOST, LEASE) for _ in range(4)]
    start = threading.Barrier(len(takers))
    won: list[HostLease] = []
    refused: list[str] = []

    def take(lease: HostLease) -> None:
        start.wait()
        try:
            lease.acquire()
            won.append(lease)
        except HostOwned as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=take, args=(lease,)) for lease in takers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and len(refused) == len(takers) - 1, refused
    row = lease_row(log)
    assert (row.agent_id, row.epoch) == (won[0].agent_id, 2)
    assert old.epoch == 1
    with log.engine.connect() as conn:
        started = conn.execute(
            sa.select(sa.func.count()).where(
                t.events.c.kind == "agent", t.events.c.to_state == "STARTED"
            )
        ).scalar()
    assert started == 2
    won[0].release()
    for lease in takers:
        lease.log.close()
    log.close()
