"""Fencing on the real PostgreSQL: the unit tests again, and a fenced writer racing a takeover.

A takeover is one UPDATE of the lease row; every write of a fenced agent reads
that row under a share lock in its own transaction. So of a commit and a
takeover running at once, either the commit ends first (the takeover waits for
it) or it sees the new epoch and aborts: no commit of the old epoch ever lands
after the takeover. The race is checked by order in the log: the new owner's
agent STARTED event is appended after its UPDATE, so every event the old
epoch committed must have a smaller seq.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa

from spawnflow.exceptions import Fenced
from spawnflow.persistence import tables as t
from spawnflow.persistence.batch import Batch, encode
from spawnflow.persistence.eventlog import EventLog
from tests.integration.test_persistence_backends import drop_pg_database, fresh_pg_database
from tests.unit.conftest import new_build
from tests.unit.test_fencing import (  # noqa: F401 - the unit tests, collected here on PostgreSQL
    HOST,
    expire,
    stale,
    take,
    test_a_fenced_log_commits_nothing_after_a_takeover,
    test_check_after_a_pause_finds_the_lease_gone_before_anything_is_touched,
)

pytestmark = pytest.mark.integration

ROUNDS = 15
WINDOW = 0.003  # seconds a transaction stays open after its fence check (widens the race)


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    url = fresh_pg_database(postgres_url)
    yield url
    drop_pg_database(url)


@pytest.fixture
def db_url(pg_url: str) -> str:
    return pg_url


def event_row(build_id: str, epoch: int, n: int) -> dict:
    return {
        "build_id": build_id,
        "ts": time.time(),
        "kind": "external",
        "subject": f"race-{n}",
        "name": "network-vif-plugged",
        "from_state": None,
        "to_state": "completed",
        "payload": {"epoch": epoch, "n": n},
    }


def via_transaction(log: EventLog, build_id: str, epoch: int, n: int) -> None:
    with log.transaction(build_id) as conn:
        time.sleep(WINDOW)  # after the fence check, before the write: a takeover may come
        row = event_row(build_id, epoch, n)
        conn.execute(sa.insert(t.events).values(**row))


def via_batch(log: EventLog, build_id: str, epoch: int, n: int) -> None:
    batch = Batch()
    batch.add([encode(event_row(build_id, epoch, n), t.events)], [])
    log.commit(build_id, batch)


Write = Callable[[EventLog, str, int, int], None]


def race(db_url: str, build_id: str, write: Write) -> tuple[int, list[int]]:
    """One round: a fenced writer commits until refused while another agent takes over.

    Returns the old epoch and the numbers of the writes that were committed.
    """
    old_log, new_log = EventLog.open(db_url), EventLog.open(db_url)
    expire(old_log)  # the previous round's owner
    epoch = take(old_log).epoch
    expire(old_log)  # this owner was paused past its lease: the next one may take it
    assert epoch is not None
    taken = threading.Event()
    start = threading.Barrier(2)

    def takeover() -> None:
        start.wait()
        time.sleep(random.uniform(0, 0.03))
        take(new_log)
        taken.set()

    thread = threading.Thread(target=takeover)
    thread.start()
    committed: list[int] = []
    start.wait()
    after = 0
    try:
        for n in range(10_000):
            try:
                write(old_log, build_id, epoch, n)
            except Fenced:
                break
            committed.append(n)
            after += taken.is_set()
            if after > 3:  # without a fence the old owner would never be stopped
                break
    finally:
        thread.join()
        old_log.close()
        new_log.close()
    return epoch, committed


@pytest.mark.parametrize("path", ["transaction", "batch"])
def test_no_commit_of_an_old_epoch_lands_after_the_takeover(pg_url, path):
    write = via_transaction if path == "transaction" else via_batch
    setup = EventLog.open(pg_url)
    build_id = new_build(setup, host=HOST)
    for _ in range(ROUNDS):
        epoch, committed = race(pg_url, build_id, write)
        with setup.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.events.c.seq, t.events.c.payload).order_by(t.events.c.seq)
            ).all()
        started = [
            seq
            for seq, payload in rows
            if isinstance(payload, dict) and payload.get("epoch") == epoch + 1 and "pid" in payload
        ]
        assert len(started) == 1, "the takeover's agent STARTED event"
        mine = [(seq, p["n"]) for seq, p in rows if p and p.get("epoch") == epoch and "n" in p]
        assert [n for _seq, n in mine] == committed  # every success landed, nothing else
        late = [n for seq, n in mine if seq > started[0]]
        assert late == [], f"epoch {epoch} committed {late} after epoch {epoch + 1} took over"
    setup.close()
