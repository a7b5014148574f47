"""The history read API on real event logs written by TaskFlow through our backend.

The builds come from ``run_build`` (tests/unit/conftest.py), which plays the
agent's runner with plain TaskFlow tasks: listing, pagination, failed steps,
spans and stats are checked on the shapes a real build writes.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from spawnflow.exceptions import PersistenceError, SchemaError, UnknownBuild
from spawnflow.history import History, parse_time
from spawnflow.persistence import db
from tests.unit.conftest import STEPS, backdate, new_build, run_build

# -- one build ----------------------------------------------------------------------------


def test_active_build_has_one_forward_span_per_step(log, url):
    build_id = run_build(log)
    with History.open(url) as history:
        build = history.build(build_id)
    assert build.state == "ACTIVE" and build.is_final and build.duration >= 0
    assert [s.name for s in build.steps] == STEPS
    for step in build.steps:
        assert step.state == "SUCCESS" and step.attempts == 1
        (span,) = step.spans
        assert (span.phase, span.outcome, span.attempt) == ("forward", "SUCCESS", 1)
        assert span.start <= span.end and step.duration == span.end - span.start
        assert step.result == {"step": step.name}
    assert [t.to_state for t in build.lifecycle] == ["QUEUED", "RUNNING", "ACTIVE"]
    assert build.failed_step is None and build.reverted_steps == []
    assert build.spec["flavor"]["vcpus"] == 1


def test_rollback_shows_failure_and_revert_spans(log, url):
    build_id = run_build(log, fail_at="volumes")
    with History.open(url) as history:
        build = history.build(build_id)
    assert build.state == "ROLLED_BACK"
    assert build.failed_step == "volumes"
    assert build.step("volumes").error.startswith("ImageChecksumMismatch: volumes: sha256")
    assert build.reverted_steps == ["disk_info", "image", "volumes"]
    image = build.step("image")
    assert [(s.phase, s.outcome) for s in image.spans] == [
        ("forward", "SUCCESS"),
        ("revert", "REVERTED"),
    ]
    assert image.revert_duration is not None and image.revert_started_at >= image.ended_at
    assert build.step("vifs").spans == [] and build.step("vifs").state == "PENDING"
    # Reverts run newest first.
    order = sorted(build.reverted_steps, key=lambda n: build.step(n).revert_started_at)
    assert order == ["volumes", "image", "disk_info"]


def test_failed_revert_is_recorded_separately(log, url):
    build_id = run_build(log, fail_at="vifs", revert_fail_at="image")
    with History.open(url) as history:
        build = history.build(build_id)
    assert build.state == "FAILED"
    assert build.failed_step == "vifs"
    assert build.revert_failed_steps == ["image"]
    assert build.step("image").revert_error.startswith("FirewallError: cannot undefine")
    assert build.step("image").spans[-1].outcome == "REVERT_FAILURE"
    assert "disk_info" not in build.reverted_steps  # the rollback stopped at image


def test_events_are_the_raw_log_in_order(log, url):
    build_id = run_build(log)
    with History.open(url) as history:
        events = history.events(build_id)
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert events[0].kind == "build" and events[0].to_state == "QUEUED"
    assert events[-1].kind == "build" and events[-1].to_state == "ACTIVE"
    assert {e.kind for e in events} >= {"build", "logbook", "flow", "atom"}
    assert any(e.kind == "atom" and e.subject and e.name == "image" for e in events)


def test_unique_prefix_resolves_and_ambiguous_or_unknown_is_refused(log, url):
    ids = [run_build(log) for _ in range(3)]
    with History.open(url) as history:
        assert history.build(ids[0][:8]).build_id == ids[0]
        assert history.resolve(ids[1]) == ids[1]
        with pytest.raises(UnknownBuild, match="no build nope"):
            history.build("nope")
        with pytest.raises(UnknownBuild, match="no build"):
            history.events(str(uuid.uuid4()))
        prefixes = {i[:1] for i in ids}
        if len(prefixes) < 3:  # two ids share a first character
            shared = next(p for p in prefixes if sum(i.startswith(p) for i in ids) > 1)
            with pytest.raises(UnknownBuild, match="ambiguous"):
                history.build(shared)


# -- listing ------------------------------------------------------------------------------


def test_builds_newest_first_with_failed_step(log, url):
    ok = run_build(log, host="cmp-1")
    bad = run_build(log, fail_at="image", host="cmp-2")
    with History.open(url) as history:
        rows = history.builds()
    assert [r.build_id for r in rows] == [bad, ok]
    assert rows[0].state == "ROLLED_BACK" and rows[0].failed_step == "image"
    assert rows[0].error.startswith("ImageChecksumMismatch")
    assert rows[1].failed_step is None and rows[1].duration >= 0


def test_filters(log, url):
    a = run_build(log, host="cmp-1", name="web-1")
    b = run_build(log, fail_at="image", host="cmp-2", name="db-1")
    c = run_build(log, fail_at="firewall", host="cmp-2", name="db-2")
    d = new_build(log, host="cmp-3")  # still QUEUED
    now = time.time()
    backdate(url, a, now - 10 * 86400)
    with History.open(url) as history:

        def ids(**kw: Any) -> set[str]:
            return {r.build_id for r in history.builds(**kw)}

        assert ids(state="ROLLED_BACK") == {b, c}
        assert ids(state=["ACTIVE", "QUEUED"]) == {a, d}
        assert ids(state="active,queued") == {a, d}
        assert ids(host="cmp-2") == {b, c}
        assert ids(instance="web-1") == {a}
        assert ids(instance=history.build(b).instance_uuid) == {b}
        assert ids(failed_step="image") == {b}
        assert ids(failed_step="firewall", host="cmp-2") == {c}
        assert ids(failed_step="volumes") == set()
        assert ids(since="7d") == {b, c, d}
        assert ids(until="7d") == {a}
        assert ids(since=now - 11 * 86400, until=now - 9 * 86400) == {a}
        with pytest.raises(ValueError, match="unknown build state"):
            history.builds(state="DONE")


def test_pagination_is_stable_with_equal_creation_times(log, url):
    ids = [run_build(log, steps=["disk_info"]) for _ in range(7)]
    same = time.time() - 100
    for build_id in ids[2:6]:  # four builds created at the very same time
        backdate(url, build_id, same)
    with History.open(url) as history:
        everything = [r.build_id for r in history.builds(limit=None)]
        pages, marker = [], None
        while True:
            page = history.builds(limit=3, marker=marker)
            if not page:
                break
            pages.append([r.build_id for r in page])
            marker = page[-1].build_id
        assert [i for p in pages for i in p] == everything
        assert sorted(everything) == sorted(ids) and len(pages) == 3
        assert history.builds(limit=2, marker=everything[-1]) == []
        with pytest.raises(UnknownBuild):
            history.builds(marker="ffffffff-ffff")


def test_stats_per_state_and_step(log, url):
    for _ in range(3):
        run_build(log)
    run_build(log, fail_at="image")
    with History.open(url) as history:
        stats = history.stats()
        only_failed = history.stats(state="ROLLED_BACK")
    assert stats.builds == {"ACTIVE": 3, "ROLLED_BACK": 1} and stats.total == 4
    by_name = {s.name: s for s in stats.steps}
    assert [s.name for s in stats.steps] == STEPS
    assert by_name["disk_info"].runs == 4 and by_name["disk_info"].reverts == 1
    assert by_name["image"].failures == 1 and by_name["image"].runs == 4
    assert by_name["volumes"].runs == 3
    for s in stats.steps:
        assert 0 <= s.p50 <= s.p95 <= s.max
    assert only_failed.builds == {"ROLLED_BACK": 1}
    assert {s.name for s in only_failed.steps} == {"disk_info", "image"}


def test_parse_time_forms():
    now = 1_700_000_000.0
    assert parse_time("2023-11-14T22:13:20Z") == now
    assert parse_time("2023-11-14 22:13:20") == now  # naive is UTC
    assert parse_time("2023-11-14T23:13:20+01:00") == now
    assert parse_time("2023-11-14") == now - (22 * 3600 + 13 * 60 + 20)
    assert parse_time("2h", now=now) == now - 7200
    assert parse_time("7d", now=now) == now - 7 * 86400
    assert parse_time(now) == now and parse_time(None) is None
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_time("yesterday")


# -- opening ------------------------------------------------------------------------------


def test_missing_database_is_refused_and_not_created(tmp_path):
    path = tmp_path / "nothing.sqlite"
    with pytest.raises(SchemaError, match="holds no spawnflow history"):
        History.open(f"sqlite:///{path}")
    assert not path.exists()


def test_foreign_and_newer_databases_are_refused(tmp_path, url, log):
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("create table invoices (id integer primary key)")
    with pytest.raises(SchemaError, match="not a spawnflow database"):
        History.open(f"sqlite:///{foreign}")
    log.close()
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        conn.execute(f"update {db.VERSION_TABLE} set version_num = '9999'")
    with pytest.raises(SchemaError, match="newer than this spawnflow"):
        History.open(url)


def test_unreachable_database_is_one_clear_error():
    with pytest.raises(PersistenceError, match="cannot read postgresql"):
        History.open("postgresql+psycopg://nobody:secret@127.0.0.1:1/none")


def test_reads_do_not_take_the_write_lock(log, url):
    """A history read while another connection holds the write lock neither waits nor fails."""
    build_id = run_build(log)
    writer = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("update builds set error = 'x'")
    try:
        done = threading.Event()
        result: list[Any] = []

        def read() -> None:
            with History.open(url) as history:
                result.append(history.build(build_id).state)
                result.append(len(history.builds()))
            done.set()

        thread = threading.Thread(target=read)
        thread.start()
        assert done.wait(5), "a history read waited for the write lock"
        assert result == ["ACTIVE", 1]
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_history_never_writes(log, url):
    build_id = run_build(log)
    with History.open(url) as history:
        with (
            pytest.raises(sa.exc.OperationalError, match=r"readonly|read-only|query_only"),
            history.engine.begin() as conn,
        ):
            conn.execute(sa.text("delete from events"))
        assert history.build(build_id).state == "ACTIVE"
