"""Durability points of the TaskFlow backend, seen from outside the writing process.

A step's RUNNING is on disk before the step runs; the end of a run is on disk
when ``run()`` returns; saves in between ride with the next commit; a failed
commit loses nothing that was saved before it; an illegal transition writes
nothing.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
import taskflow.engines
from taskflow import states, task
from taskflow.patterns import linear_flow
from taskflow.persistence import models

from spawnflow.exceptions import IllegalTransition
from spawnflow.persistence import open_backend, replay
from spawnflow.persistence.backend import EventLogBackend


def committed(db: Path, query: str, *args: object) -> list[tuple]:
    """What another process reading the file sees now (committed rows only)."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute(query, args).fetchall()
    finally:
        conn.close()


class SeesItself(task.Task):
    """Records what the log on disk says about this step while it runs."""

    def __init__(self, name: str, db: Path, seen: dict[str, object]):
        super().__init__(name=name)
        self.db, self.seen = db, seen

    def execute(self) -> str:
        self.seen[self.name] = (
            committed(self.db, "SELECT state FROM atomdetails WHERE name = ?", self.name),
            committed(
                self.db,
                "SELECT count(*) FROM events WHERE name = ? AND to_state = ?",
                self.name,
                states.RUNNING,
            )[0][0],
            committed(self.db, "SELECT state FROM flowdetails")[0][0],
        )
        return f"{self.name} done"


def new_book(backend: EventLogBackend) -> tuple[models.LogBook, models.FlowDetail]:
    book = models.LogBook("durability")
    flow_detail = models.FlowDetail("flow", uuid=models.uuidutils.generate_uuid())
    book.add(flow_detail)
    with contextlib.closing(backend.get_connection()) as conn:
        conn.save_logbook(book)
    return book, flow_detail


def load(
    flow: linear_flow.Flow,
    backend: EventLogBackend,
    book: models.LogBook,
    flow_detail: models.FlowDetail,
):
    return taskflow.engines.load(
        flow, flow_detail=flow_detail, book=book, backend=backend, engine="serial"
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "log.sqlite"


@pytest.fixture
def backend(db: Path):
    backend = open_backend(f"sqlite:///{db}")
    yield backend
    backend.close()


def test_each_step_is_on_disk_as_running_before_it_runs(db, backend):
    seen: dict[str, object] = {}
    names = [f"s{i}" for i in range(4)]
    book, flow_detail = new_book(backend)
    load(
        linear_flow.Flow("f").add(*(SeesItself(n, db, seen) for n in names)),
        backend,
        book,
        flow_detail,
    ).run()
    # The flow's own RUNNING rode along with the first step's commit.
    assert seen == {n: ([(states.RUNNING,)], 1, states.RUNNING) for n in names}


def test_the_end_of_a_run_is_on_disk_when_run_returns(db, backend):
    book, flow_detail = new_book(backend)
    load(
        linear_flow.Flow("f").add(*(SeesItself(f"s{i}", db, {}) for i in range(3))),
        backend,
        book,
        flow_detail,
    ).run()
    # Nothing closed or flushed: another process already sees every result.
    assert committed(db, "SELECT state FROM flowdetails") == [(states.SUCCESS,)]
    assert committed(db, "SELECT name, state FROM atomdetails ORDER BY name") == [
        (f"s{i}", states.SUCCESS) for i in range(3)
    ]
    docs = committed(db, "SELECT doc FROM atomdetails WHERE name = 's2'")
    assert '"results": "s2 done"' in docs[0][0]


def test_saves_between_durability_points_ride_along(db, backend):
    commits: list[str] = []
    engine = backend.eventlog.engine

    @sa.event.listens_for(engine, "connect")
    def trace(dbapi_conn, _record):
        dbapi_conn.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)

    # Reconnect through the traced pool (a closed log would refuse every write).
    log = backend.eventlog
    if log._writer is not None:
        log._writer.close()
        log._writer = None
    engine.dispose()
    book, flow_detail = new_book(backend)
    load(
        linear_flow.Flow("f").add(*(SeesItself(f"s{i}", db, {}) for i in range(5))),
        backend,
        book,
        flow_detail,
    ).run()
    # The logbook, each step's RUNNING, the flow's SUCCESS; results, progress
    # and the flow's RUNNING rode along.
    assert len(commits) == 1 + 5 + 1


class Boom(task.Task):
    def execute(self) -> None:
        raise AssertionError("never runs: its RUNNING could not be written")


def test_a_failed_commit_drops_that_save_and_keeps_the_earlier_ones(db, backend):
    book, flow_detail = new_book(backend)
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TRIGGER full_disk BEFORE INSERT ON events "
            "WHEN NEW.name = 'boom' AND NEW.to_state = 'RUNNING' "
            "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    engine = load(
        linear_flow.Flow("f").add(SeesItself("first", db, {}), Boom("boom")),
        backend,
        book,
        flow_detail,
    )
    with pytest.raises(sa.exc.DBAPIError, match="disk full"):
        engine.run()
    # first's result rode with boom's RUNNING, whose commit failed: it went back
    # to the queue and was committed with the next durability point (the
    # engine marking the flow FAILURE), in order.
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TRIGGER full_disk")
    backend.eventlog.flush(all_builds=True)
    assert committed(db, "SELECT state FROM atomdetails WHERE name = 'first'") == [
        (states.SUCCESS,)
    ]
    order = committed(
        db,
        "SELECT kind, name, to_state FROM events WHERE to_state IN "
        "('SUCCESS', 'FAILURE') AND from_state != to_state ORDER BY seq",
    )
    assert order == [("atom", "first", states.SUCCESS), ("flow", "flow", states.FAILURE)]
    # boom's RUNNING was never written: the log does not claim the step started.
    assert committed(
        db, "SELECT count(*) FROM events WHERE name = 'boom' AND to_state = 'RUNNING'"
    ) == [(0,)]
    assert replay.replay(backend.eventlog) == replay.current(backend.eventlog)


def test_an_illegal_transition_in_a_flow_save_writes_nothing(db, backend):
    _book, flow_detail = new_book(backend)
    first = models.TaskDetail("first", models.uuidutils.generate_uuid())
    second = models.TaskDetail("second", models.uuidutils.generate_uuid())
    first.state = second.state = states.PENDING
    flow_detail.add(first)
    flow_detail.add(second)
    with contextlib.closing(backend.get_connection()) as conn:
        conn.update_flow_details(flow_detail)
        backend.eventlog.flush(all_builds=True)
        before = committed(db, "SELECT count(*) FROM events")

        changed = flow_detail.copy()
        ok, bad = first.copy(), second.copy()
        ok.state = states.RUNNING  # legal on its own
        bad.state = states.SUCCESS  # PENDING -> SUCCESS is not
        changed.add(ok)
        changed.add(bad)
        changed.state = states.RUNNING
        with pytest.raises(IllegalTransition, match="PENDING -> SUCCESS"):
            conn.update_flow_details(changed)
        backend.eventlog.flush(all_builds=True)
        assert committed(db, "SELECT count(*) FROM events") == before
        assert committed(db, "SELECT name, state FROM atomdetails ORDER BY name") == [
            ("first", states.PENDING),
            ("second", states.PENDING),
        ]

        # Nothing of the refused save stayed behind in the backend either.
        ok_alone = first.copy()
        ok_alone.state = states.RUNNING
        conn.update_atom_details(ok_alone)
        assert committed(db, "SELECT name, state FROM atomdetails ORDER BY name") == [
            ("first", states.RUNNING),
            ("second", states.PENDING),
        ]
        first.state = states.REVERTED  # never from RUNNING (back to PENDING is a reset)
        with pytest.raises(IllegalTransition, match="RUNNING -> REVERTED"):
            conn.update_atom_details(first)


def test_two_threads_saving_the_same_new_logbook_both_succeed(db, backend):
    import threading

    new_book(backend)  # warm up; the race is on a second book
    twin = models.LogBook("twin")
    twin.add(models.FlowDetail("flow", uuid=models.uuidutils.generate_uuid()))
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []
    read = backend.eventlog.projection_doc

    first_reads = [1, 1]

    def slow_read(table: str, uuid: str) -> object:
        doc = read(table, uuid)
        if table == "logbooks" and uuid == twin.uuid and first_reads:
            first_reads.pop()
            barrier.wait(timeout=5)  # both saw "no such logbook" before either commits
        return doc

    backend.eventlog.projection_doc = slow_read

    def save() -> None:
        try:
            with contextlib.closing(backend.get_connection()) as conn:
                conn.save_logbook(twin)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=save) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    backend.eventlog.projection_doc = read
    assert errors == []
    assert committed(db, "SELECT count(*) FROM logbooks WHERE uuid = ?", twin.uuid) == [(1,)]
    assert replay.replay(backend.eventlog) == replay.current(backend.eventlog)


def test_a_row_another_writer_made_is_updated_not_inserted_twice(db, backend):
    """Another process added an atom this backend's cache never saw: saving the flow
    again must not queue a duplicate insert that would fail every later commit."""
    other = open_backend(f"sqlite:///{db}")
    try:
        _book, flow_detail = new_book(backend)
        theirs = other.get_connection().get_flow_details(flow_detail.uuid)
        theirs.add(models.TaskDetail("x", models.uuidutils.generate_uuid()))
        theirs.meta = {"by": "other"}
        other.get_connection().update_flow_details(theirs)
        other.eventlog.flush(all_builds=True)

        ours = backend.get_connection().get_flow_details(flow_detail.uuid)
        ours.meta = {"by": "us"}
        backend.get_connection().update_flow_details(ours)
        backend.eventlog.flush(all_builds=True)  # would raise IntegrityError forever
        assert committed(db, "SELECT count(*) FROM atomdetails") == [(1,)]
        assert replay.replay(backend.eventlog) == replay.current(backend.eventlog)
    finally:
        other.close()


class Unstorable(task.Task):
    def execute(self) -> object:
        return {"handle": object()}  # nothing JSON can hold


def test_a_result_that_cannot_be_stored_fails_its_own_build_only(db, backend):
    book, flow_detail = new_book(backend)
    with pytest.raises(ValueError):
        load(linear_flow.Flow("f").add(Unstorable("u")), backend, book, flow_detail).run()
    # Nothing unstorable was queued: other builds still run and the log closes.
    book2, flow2 = new_book(backend)
    load(linear_flow.Flow("g").add(SeesItself("fine", db, {})), backend, book2, flow2).run()
    assert committed(db, "SELECT state FROM flowdetails WHERE uuid = ?", flow2.uuid) == [
        (states.SUCCESS,)
    ]
    backend.eventlog.flush(all_builds=True)
