"""The history API, export/import and purge on a real PostgreSQL server (the fleet's log)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from spawnflow.exceptions import SchemaError, UnknownBuild
from spawnflow.history import History, import_document, retention
from spawnflow.persistence import replay
from spawnflow.persistence.eventlog import EventLog
from tests.integration.test_persistence_backends import drop_pg_database, fresh_pg_database
from tests.unit.test_history_api import new_build, run_build

pytestmark = pytest.mark.integration


@pytest.fixture
def pg(postgres_url):
    url = fresh_pg_database(postgres_url)
    yield url
    drop_pg_database(url)


def test_listing_show_stats_on_postgresql(pg):
    log = EventLog.open(pg)
    try:
        ok = run_build(log, host="cmp-1", name="web-1")
        bad = run_build(log, fail_at="image", host="cmp-2")
        failed = run_build(log, fail_at="vifs", revert_fail_at="image", host="cmp-2")
        queued = new_build(log, host="cmp-3")
    finally:
        log.close()
    with History.open(pg) as history:
        assert [b.build_id for b in history.builds()] == [queued, failed, bad, ok]
        assert {b.build_id: b.failed_step for b in history.builds()} == {
            queued: None,
            failed: "vifs",
            bad: "image",
            ok: None,
        }
        assert [b.build_id for b in history.builds(failed_step="image")] == [bad]
        assert [b.build_id for b in history.builds(state="ROLLED_BACK,FAILED", host="cmp-2")] == [
            failed,
            bad,
        ]
        assert [b.build_id for b in history.builds(instance="web-1", since="1h")] == [ok]
        page = history.builds(limit=2)
        assert [b.build_id for b in history.builds(limit=2, marker=page[-1].build_id)] == [bad, ok]
        assert history.build(bad[:10]).diagnose().text.endswith("rolled back: 2 steps reverted")
        with pytest.raises(UnknownBuild):
            history.build("zz")
        stats = history.stats()
        assert stats.builds == {"ACTIVE": 1, "FAILED": 1, "QUEUED": 1, "ROLLED_BACK": 1}
        assert {s.name: s.failures for s in stats.steps}["image"] == 1


def test_export_from_postgresql_import_into_sqlite_and_back(pg, tmp_path):
    log = EventLog.open(pg)
    try:
        build_id = run_build(log, fail_at="image")
    finally:
        log.close()
    with History.open(pg) as history:
        doc = history.export(build_id)
        original = history.build(build_id)
    lite = f"sqlite:///{tmp_path}/copy.sqlite"
    import_document(lite, doc)
    with History.open(lite) as history:
        assert history.build(build_id) == original
    other = fresh_pg_database(pg)
    try:
        import_document(other, doc)
        log = EventLog.open(other)
        try:
            assert replay.replay(log) == replay.current(log)
        finally:
            log.close()
    finally:
        drop_pg_database(other)


def test_purge_on_postgresql(pg):
    log = EventLog.open(pg)
    try:
        old = [run_build(log, steps=["disk_info"]) for _ in range(3)]
        running = new_build(log)
        log.transition_build(running, "RUNNING")
        engine = sa.create_engine(pg)
        with engine.begin() as conn:
            conn.execute(sa.text("update builds set updated_at = updated_at - 40 * 86400"))
        engine.dispose()
        assert retention.purge(log, 30, batch_size=2) == 3
    finally:
        log.close()
    with History.open(pg) as history:
        assert [b.build_id for b in history.builds()] == [running]
        for build_id in old:
            with pytest.raises(UnknownBuild):
                history.events(build_id)


def test_cli_on_postgresql_and_refusals(pg, tmp_path):
    log = EventLog.open(pg)
    try:
        build_id = run_build(log)
    finally:
        log.close()
    conf = tmp_path / "empty.conf"
    conf.write_text("[DEFAULT]\n")
    started = time.time()
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "spawnflow.cmd.main",
            "--config-file",
            str(conf),
            "history",
            "show",
            build_id[:8],
            "--db",
            pg,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "state     ACTIVE" in shown.stdout and time.time() - started < 30
    empty = fresh_pg_database(pg)
    try:
        with pytest.raises(SchemaError, match="holds no spawnflow history"):
            History.open(empty)
    finally:
        drop_pg_database(empty)
