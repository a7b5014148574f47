"""A build whose event log is briefly unavailable is held, then recovered, never FAILED.

The fault is real: another connection holds SQLite's write lock (what a
``history import`` does) past the agent's busy timeout, taken the moment a
chosen step finishes, so the next durable write (the next step's RUNNING,
or the build's ACTIVE) fails with "database is locked".
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

import spawnflow.conf
from spawnflow import Agent
from spawnflow.exceptions import HostOwned
from spawnflow.history import log_wait
from spawnflow.persistence import lifecycle
from tests.helpers import history_of, load_conf, make_spec

TEST_DRIVER = {"connection_uri": "test:///default", "virt_type": "test"}


def _conf(tmp_path: Path, recovery: dict | None = None, **database: object):
    db_file = tmp_path / "state" / "spawnflow.sqlite"
    return load_conf(
        tmp_path,
        libvirt=TEST_DRIVER,
        firewall={"driver": "noop"},
        # A short busy timeout: the lock outlasts it at once.
        database={
            "connection": f"sqlite:///{db_file}?timeout=0.2",
            "retry_interval": 0.1,
            **database,
        },
        recovery=recovery or {},
    )


def _until(ready, what: str, timeout: float = 30):
    """``ready()``'s first true value, polled until ``timeout`` seconds (then fail)."""
    deadline = time.monotonic() + timeout
    while not (value := ready()):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return value


def _lock_of(conf) -> WriteLock:
    return WriteLock(spawnflow.conf.database_url(conf).split("///", 1)[1].split("?")[0])


class WriteLock:
    """Another process's write transaction on the log, taken and released on demand."""

    def __init__(self, path: str):
        self.path = path
        self.conn: sqlite3.Connection | None = None
        self.taken = threading.Event()

    def take(self) -> None:
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.conn.execute("BEGIN IMMEDIATE")
        self.taken.set()

    def release(self) -> None:
        if self.conn is not None:
            self.conn.execute("ROLLBACK")
            self.conn.close()
            self.conn = None


def _lock_after(lock: WriteLock, step: str):
    """A progress callback that takes the lock when ``step`` succeeds (once)."""

    def progress(_build_id: str, name: str, state: str, _elapsed: float) -> None:
        if name == step and state == "SUCCESS" and not lock.taken.is_set():
            lock.take()

    return progress


@pytest.mark.parametrize("step", ["image", "domain_create", "wait_for_boot"])
def test_locked_log_holds_the_build_then_it_resumes(tmp_path: Path, image: Path, step: str):
    conf = _conf(tmp_path)
    lock = _lock_of(conf)
    with Agent(conf, progress=_lock_after(lock, step)) as agent:
        build_id = agent.start_build(make_spec(image))
        assert lock.taken.wait(30), "the step never finished"
        # While the lock is held the build waits, and says so.
        wait = _until(
            lambda: log_wait(str(conf.state_path), conf.host, build_id),
            "the agent never said it was waiting for the log",
        )
        assert "locked" in wait.error
        build = history_of(conf, build_id)
        assert not lifecycle.is_final(build.state)
        text = build.diagnose(log_wait=wait).text
        assert text.startswith("waiting for the database since"), text
        if step == "domain_create":  # and as an operator sees it (a second process)
            shown = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "spawnflow.cmd.main",
                    "--config-file",
                    str(tmp_path / "spawnflow.conf"),
                    "history",
                    "show",
                    build_id,
                    "--diagnose",
                ],
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            ).stdout
            assert "waiting for the database since" in " ".join(shown.split()), shown
        lock.release()
        outcome = agent.wait(build_id, timeout=60)
    assert outcome.state == lifecycle.ACTIVE, outcome
    build = history_of(conf, build_id)
    reasons = [
        str((t.detail or {}).get("reason", ""))
        for t in build.lifecycle
        if t.to_state == lifecycle.INTERRUPTED
    ]
    assert any("event log was unavailable" in r for r in reasons), reasons
    assert not any(s.state == "FAILURE" for s in build.steps)
    assert log_wait(str(conf.state_path), conf.host, build_id) is None


def test_agent_gives_up_and_the_next_start_recovers(tmp_path: Path, image: Path):
    """Past max_retries the agent stops; the build is left unfinished (never FAILED)
    and the next start, with the log back, finishes it."""
    conf = _conf(tmp_path, max_retries=3, max_retry_interval=0.2)
    lock = _lock_of(conf)
    agent = Agent(conf, progress=_lock_after(lock, "domain_xml"))
    agent.start()
    try:
        build_id = agent.start_build(make_spec(image))
        _until(lambda: agent.failed, "the agent never gave up")
        assert agent.failed is not None and "event log" in agent.failed
        lock.release()
    finally:
        lock.release()
        agent.stop()
    assert history_of(conf, build_id).state == lifecycle.RUNNING
    with Agent(conf) as again:
        outcome = again.wait(build_id, timeout=60)
    assert outcome.state in (lifecycle.ACTIVE, lifecycle.ROLLED_BACK), outcome


def test_a_read_that_fails_inside_the_engine_holds_the_build(tmp_path: Path, image: Path):
    """After a first hold, the recovered run re-reads the flow from the log (its cache
    was dropped); that read failing too must hold the build again, not fail it."""
    conf = _conf(tmp_path)
    lock = _lock_of(conf)

    def release_soon(*args: object) -> None:
        _lock_after(lock, "domain_xml")(*args)  # type: ignore[arg-type]
        if lock.taken.is_set() and not released.is_set():
            released.set()
            threading.Timer(0.5, lock.release).start()

    released = threading.Event()
    failed_reads: list[str] = []
    with Agent(conf, progress=release_soon) as agent:

        @sa.event.listens_for(agent.eventlog.engine, "before_cursor_execute")
        def flaky_read(_conn, _cursor, statement, *_rest):
            """Once the build was resumed in place, the DBAPI fails its next flow read."""
            if failed_reads or not released.is_set() or "atomdetails" not in statement:
                return
            if not threading.current_thread().name.startswith("spawnflow-build"):
                return
            states = [t.to_state for t in history_of(conf, build_id).lifecycle]
            if states[-2:] == [lifecycle.INTERRUPTED, lifecycle.RUNNING]:
                failed_reads.append(statement)
                raise sqlite3.OperationalError("disk I/O error")

        build_id = agent.start_build(make_spec(image))
        outcome = agent.wait(build_id, timeout=60)
    assert failed_reads, "the fault never fired"
    assert outcome.state == lifecycle.ACTIVE, outcome
    faults = [
        str((t.detail or {}).get("reason", ""))
        for t in history_of(conf, build_id).lifecycle
        if t.to_state == lifecycle.INTERRUPTED
    ]
    assert len(faults) == 2 and "disk I/O error" in faults[1], faults


def test_stop_while_the_log_is_down_still_closes_everything(tmp_path: Path, image: Path):
    conf = _conf(tmp_path, recovery={"lease_seconds": 3})
    lock = _lock_of(conf)
    agent = Agent(conf, progress=_lock_after(lock, "domain_xml"))
    agent.start()
    try:
        build_id = agent.start_build(make_spec(image))
        _until(
            lambda: log_wait(str(conf.state_path), conf.host, build_id),
            "the build never waited for the log",
        )
        agent.stop()  # the log is still locked: no exception, nothing left open
        assert agent.eventlog is None
    finally:
        lock.release()
    # The lease was not given back (the log was down): the next agent starts once
    # it expires.
    again = Agent(conf)
    deadline = time.monotonic() + 30
    while True:
        try:
            again.start()
            break
        except HostOwned:
            assert time.monotonic() < deadline, "the lease never expired"
            time.sleep(0.5)
    try:
        outcome = again.wait(build_id, timeout=60)
    finally:
        again.stop()
    assert outcome.state in (lifecycle.ACTIVE, lifecycle.ROLLED_BACK), outcome
