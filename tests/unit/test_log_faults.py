"""The log's side of faults: which errors mean "unavailable", held builds, the wait file."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from spawnflow.exceptions import LogUnavailable
from spawnflow.persistence import faults, lifecycle, log_wait
from spawnflow.persistence import tables as t
from spawnflow.persistence.eventlog import ATOM, EventLog
from spawnflow.persistence.log_wait import LogWait


def _wrapped(orig: Exception) -> sa.exc.DBAPIError:
    return sa.exc.DBAPIError.instance("SELECT 1", None, orig, sqlite3.Error)


@pytest.mark.parametrize(
    ("orig", "expected"),
    [
        (sqlite3.OperationalError("database is locked"), True),
        (sqlite3.OperationalError("database or disk is full"), True),
        (sqlite3.OperationalError("disk I/O error"), True),
        (sqlite3.OperationalError("unable to open database file"), True),
        (sqlite3.OperationalError("no such table: builds"), False),
        (sqlite3.OperationalError("table events has no column named x"), False),
        (sqlite3.OperationalError("attempt to write a readonly database"), False),
        (sqlite3.DatabaseError("database disk image is malformed"), False),
        (sqlite3.IntegrityError("UNIQUE constraint failed: builds.build_id"), False),
    ],
)
def test_sqlite_errors_are_classified(orig: Exception, expected: bool):
    assert faults.unavailable(_wrapped(orig)) is expected


def test_a_refused_postgresql_connection_is_unavailable():
    # A real driver error: nothing listens on port 9 here.
    engine = sa.create_engine("postgresql+psycopg://x:y@127.0.0.1:9/none?connect_timeout=2")
    with pytest.raises(sa.exc.SQLAlchemyError) as caught:
        engine.connect()
    engine.dispose()
    assert faults.unavailable(caught.value)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/log.sqlite?timeout=0.1"


def _locked(url: str) -> sqlite3.Connection:
    conn = sqlite3.connect(url.split("///", 1)[1].split("?")[0], isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def _new_build(log: EventLog, build_id: str) -> None:
    log.create_build(
        build_id, instance_uuid=build_id, instance_name="vm", host="h", spec={"instance": {}}
    )


def _deferred_event(build_id: str, name: str) -> dict[str, object]:
    return {
        "build_id": build_id,
        "ts": time.time(),
        "kind": ATOM,
        "subject": name,
        "name": name,
        "from_state": None,
        "to_state": "PENDING",
        "payload": t.dump_json({"name": name}),
    }


def _event_names(log: EventLog, build_id: str) -> list[str | None]:
    return [row.name for row in log.events(build_id) if row.kind == ATOM]


def test_a_failed_write_holds_its_build_until_released(url: str):
    with EventLog.open(url) as log:
        _new_build(log, "b1")
        log.defer("b1", [_deferred_event("b1", "before")], [])
        lock = _locked(url)
        try:
            with pytest.raises(LogUnavailable, match="database is locked"):
                log.transition_build("b1", lifecycle.RUNNING)
            assert log.held("b1") == "database is locked"
            # Every later write of the build is refused without a query, even
            # once the log could take it: nothing after the failure gets in.
            lock.execute("ROLLBACK")
            with pytest.raises(LogUnavailable, match="held"):
                log.transition_build("b1", lifecycle.RUNNING)
            with pytest.raises(LogUnavailable, match="held"):
                log.defer("b1", [_deferred_event("b1", "after")], [])
            assert log.get_build("b1").state == lifecycle.QUEUED
            assert _event_names(log, "b1") == []
            log.release("b1")
        finally:
            lock.close()
        assert log.held("b1") is None
        assert _event_names(log, "b1") == ["before"]  # queued before the failure: kept
        log.transition_build("b1", lifecycle.RUNNING)
        assert log.get_build("b1").state == lifecycle.RUNNING


def test_release_while_still_unavailable_keeps_the_hold(url: str):
    with EventLog.open(url) as log:
        _new_build(log, "b1")
        lock = _locked(url)
        try:
            with pytest.raises(LogUnavailable):
                log.transition_build("b1", lifecycle.RUNNING)
            with pytest.raises(LogUnavailable):
                log.release("b1")
            assert log.held("b1") is not None
        finally:
            lock.execute("ROLLBACK")
            lock.close()


def test_flushing_everything_leaves_a_held_build_queued(url: str):
    with EventLog.open(url) as log:
        _new_build(log, "held")
        _new_build(log, "other")
        log.defer("held", [_deferred_event("held", "h1")], [])
        lock = _locked(url)
        try:
            with pytest.raises(LogUnavailable):
                log.flush("held")
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        log.defer("other", [_deferred_event("other", "o1")], [])
        log.flush(all_builds=True)  # what a read through the backend does first
        assert _event_names(log, "other") == ["o1"]
        assert _event_names(log, "held") == []
        log.release("held")
        assert _event_names(log, "held") == ["h1"]


def test_wait_file_round_trip(tmp_path: Path):
    wait = LogWait("b1", since=100.0, attempts=2, error="database is locked")
    log_wait.write(str(tmp_path), "cmp 1/x", [wait])
    assert log_wait.read(str(tmp_path), "cmp 1/x", "b1") == wait
    assert log_wait.read(str(tmp_path), "cmp 1/x", "b2") is None
    log_wait.write(str(tmp_path), "cmp 1/x", [])
    assert log_wait.read(str(tmp_path), "cmp 1/x", "b1") is None
    # One file, always the reserved size: rewriting it needs no free blocks.
    (only,) = tmp_path.iterdir()
    assert only.stat().st_size == log_wait.SIZE


def test_wait_file_is_rewritten_in_place_on_a_full_disk(tmp_path: Path):
    """On a filesystem with no free block left, the reserved file still takes the wait."""
    log_wait.reserve(str(tmp_path), "h")
    # RLIMIT_FSIZE would not model this; instead check the write never grows the
    # file nor reallocates it (same inode, same blocks), which is what needs room.
    path = tmp_path / "log-wait-h.json"
    before = path.stat()
    log_wait.write(str(tmp_path), "h", [LogWait("b1", 1.0, 3, "database or disk is full")])
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_blocks) == (
        before.st_ino,
        before.st_size,
        before.st_blocks,
    )
    assert log_wait.read(str(tmp_path), "h", "b1") is not None


def test_wait_file_of_a_dead_agent_says_nothing(tmp_path: Path):
    code = (
        "import sys; from spawnflow.persistence import log_wait as w; "
        "w.write(sys.argv[1], 'h', [w.LogWait('b1', 1.0, 0, 'locked')])"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    assert (tmp_path / "log-wait-h.json").exists()
    assert log_wait.read(str(tmp_path), "h", "b1") is None


def test_a_batch_whose_commit_answer_was_lost_is_not_written_twice(url: str):
    """The server committed, then went away before answering: the batch came back
    to the queue, but its events are in the log; release must not repeat them."""
    with EventLog.open(url) as log:
        _new_build(log, "b1")
        log.defer("b1", [_deferred_event("b1", "e1"), _deferred_event("b1", "e2")], [])
        batch = log._take("b1")
        assert batch is not None
        log.commit("b1", batch)  # what the server did
        log._give_back("b1", batch)  # what the client saw: a failure
        with pytest.raises(LogUnavailable):
            log.hold("b1", _wrapped(sqlite3.OperationalError("disk I/O error")))
        log.release("b1")
        assert _event_names(log, "b1") == ["e1", "e2"]
