"""purge: finished builds older than N days go with all their rows; unfinished ones never."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from spawnflow.history import History, retention
from spawnflow.persistence import replay
from spawnflow.persistence.eventlog import EventLog
from tests.unit.conftest import backdate, new_build, run_build

DAY = 86400


def age(url: str, build_id: str, days: float) -> None:
    """Pretend the build finished ``days`` ago."""
    backdate(url, build_id, time.time() - days * DAY - 60, took=60)


def counts(url: str, build_id: str) -> dict[str, int]:
    engine = sa.create_engine(url)
    out = {}
    with engine.connect() as conn:
        for table, column in (
            ("events", "build_id"),
            ("builds", "build_id"),
            ("logbooks", "uuid"),
            ("flowdetails", "book_uuid"),
            ("atomdetails", "book_uuid"),
        ):
            out[table] = conn.execute(
                sa.text(f"select count(*) from {table} where {column} = :b"), {"b": build_id}
            ).scalar()
    engine.dispose()
    return out


def test_old_finished_builds_go_with_every_row(log, url):
    old_ok = run_build(log)
    old_bad = run_build(log, fail_at="image")
    old_failed = run_build(log, fail_at="vifs", revert_fail_at="image")
    young = run_build(log)
    for build_id in (old_ok, old_bad, old_failed):
        age(url, build_id, 40)
    age(url, young, 5)
    assert counts(url, old_ok)["atomdetails"] > 0 and counts(url, old_ok)["events"] > 0
    assert retention.count_purgeable(log, 30) == 3
    assert retention.purge(log, 30) == 3
    for build_id in (old_ok, old_bad, old_failed):
        assert counts(url, build_id) == dict.fromkeys(
            ("events", "builds", "logbooks", "flowdetails", "atomdetails"), 0
        )
    assert counts(url, young)["events"] > 0
    with History.open(url) as history:
        assert [b.build_id for b in history.builds()] == [young]
    # What is left is consistent (builds rows differ only by the times age() faked).
    replayed, stored = replay.replay(log), replay.current(log)
    assert set(replayed["builds"]) == set(stored["builds"]) == {young}
    for table in ("logbooks", "flowdetails", "atomdetails"):
        assert replayed[table] == stored[table]
    assert retention.purge(log, 30) == 0


def test_unfinished_builds_are_never_purged(log, url):
    queued = new_build(log)
    running = new_build(log)
    log.transition_build(running, "RUNNING")
    interrupted = new_build(log)
    log.transition_build(interrupted, "RUNNING")
    log.transition_build(interrupted, "INTERRUPTED")
    for build_id in (queued, running, interrupted):
        age(url, build_id, 400)
    assert retention.purge(log, 0) == 0
    for build_id in (queued, running, interrupted):
        assert counts(url, build_id)["builds"] == 1


def test_batches_are_separate_short_transactions(log, url):
    ids = [run_build(log, steps=["disk_info", "image"]) for _ in range(5)]
    for build_id in ids:
        age(url, build_id, 10)
    commits = []
    sa.event.listen(log.engine, "commit", lambda conn: commits.append(1))
    progress = []
    assert retention.purge(log, 1, batch_size=2, progress=progress.append) == 5
    assert progress == [2, 4, 5]
    assert len(commits) == 3


def test_a_writer_is_not_blocked_for_the_whole_purge(log, url):
    """Between batches another writer gets the database."""
    ids = [run_build(log, steps=["disk_info"]) for _ in range(6)]
    for build_id in ids:
        age(url, build_id, 10)
    other = EventLog.open(url)
    wrote: list[float] = []

    def between_batches(done: int) -> None:
        if done == 2:
            thread = threading.Thread(target=lambda: (new_build(other), wrote.append(time.time())))
            thread.start()
            thread.join(5)

    try:
        assert retention.purge(log, 1, batch_size=2, progress=between_batches) == 6
    finally:
        other.close()
    assert len(wrote) == 1


def test_now_and_arguments(log, url):
    build_id = run_build(log)
    assert retention.purge(log, 1, now=time.time() + 2 * DAY) == 1
    assert counts(url, build_id)["builds"] == 0
    with pytest.raises(ValueError):
        retention.purge(log, -1)
    with pytest.raises(ValueError):
        retention.purge(log, 1, batch_size=0)
