"""Closing the event log under a thread that still writes through it.

What an ``Agent.stop()`` that returned while a build thread still ran came to:
the log's kept SQLite writer connection closed (and the engine disposed)
under a thread in the middle of a commit. That thread's commit then failed
with whatever the pool or the driver said at that moment (an AssertionError
from the pool, "'NoneType' object has no attribute 'commit'", "Cannot operate
on a closed database", the "disk I/O error" of the report), and its next
write silently opened a fresh pool and went on writing after close() had
returned. ``Agent.stop()`` now closes the log only after every build thread
has ended (tests/integration/test_stop.py); the log itself should still make
a late writer fail cleanly, which is what this test asks of it.
"""

from __future__ import annotations

import json
import threading
import time

import sqlalchemy as sa

from spawnflow.exceptions import PersistenceError
from spawnflow.persistence import db
from spawnflow.persistence.batch import Batch
from spawnflow.persistence.eventlog import EventLog
from tests.unit.conftest import new_build


def _event(build_id: str, n: int) -> dict[str, object]:
    return {
        "build_id": build_id,
        "ts": time.time(),
        "kind": "atom",
        "subject": "image",
        "name": "image",
        "from_state": None,
        "to_state": "RUNNING",
        "payload": json.dumps({"n": n}),
    }


def _count(url: str) -> int:
    engine = db.read_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("select count(*) from events")).scalar_one())
    finally:
        engine.dispose()


def test_a_writer_left_running_after_close_fails_cleanly_and_writes_nothing(url):
    log = EventLog.open(url)
    build_id = new_build(log)
    errors: list[BaseException] = []
    done = threading.Event()

    def writer() -> None:  # a build thread that keeps committing its steps
        n = 0
        while not done.is_set():
            batch = Batch()
            batch.add([_event(build_id, n)], [])
            try:
                log.commit(build_id, batch)
            except BaseException as exc:
                errors.append(exc)
            n += 1
            time.sleep(0.001)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.2)
        log.close()
        at_close = _count(url)
        time.sleep(0.3)
        after = _count(url)
    finally:
        done.set()
        thread.join()
    assert after == at_close, f"{after - at_close} events written after close() returned"
    assert errors, "the writer went on as if the log were open"
    odd = [f"{type(e).__name__}: {e}" for e in errors if not isinstance(e, PersistenceError)]
    assert not odd, f"a late writer got errors that are not the log's: {sorted(set(odd))}"
