"""Concurrent starts of one instance from 8 processes give one build (SQLite, PostgreSQL).

Each process opens its own EventLog and calls ``queue_build`` (what ``spawn
--no-wait`` does) at the same moment; the partial unique index lets one insert
win and ``queue_build`` hands every loser the winner's build.
"""

from __future__ import annotations

import multiprocessing
import traceback
from pathlib import Path

import pytest

from spawnflow.persistence import lifecycle
from spawnflow.persistence.eventlog import EventLog
from tests.helpers import make_spec
from tests.integration.test_persistence_backends import drop_pg_database, fresh_pg_database

pytestmark = pytest.mark.integration

PROCESSES = 8
ROUNDS = 3  # three instances, one after the other: three chances for a race to show


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path, postgres_url):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/race.sqlite"
        return
    url = fresh_pg_database(postgres_url)
    yield url
    drop_pg_database(url)


def start(url: str, spec: dict, barrier, results) -> None:
    """One process: open the log, wait for the others, queue the build."""
    from spawnflow.engine.agent import queue_build
    from spawnflow.flows.spec import parse_spec
    from spawnflow.persistence.backend import EventLogBackend

    try:
        log = EventLog.open(url)
        backend = EventLogBackend(eventlog=log)
        parsed = parse_spec(spec)
        barrier.wait(timeout=60)
        results.put(("ok", *queue_build(log, backend, parsed, "cmp1")))
        backend.close()
        log.close()
    except BaseException:
        results.put(("error", traceback.format_exc(), None))


def test_concurrent_starts_of_one_instance_give_one_build(db_url, tmp_path: Path):
    EventLog.open(db_url).close()  # the schema exists before the race
    ctx = multiprocessing.get_context("fork")
    unfinished = lifecycle.STATES - lifecycle.FINAL
    for _round in range(ROUNDS):
        spec = make_spec(tmp_path / "image.qcow2")
        barrier = ctx.Barrier(PROCESSES)
        results = ctx.Queue()
        workers = [
            ctx.Process(target=start, args=(db_url, spec, barrier, results))
            for _ in range(PROCESSES)
        ]
        for worker in workers:
            worker.start()
        answers = [results.get(timeout=120) for _ in workers]
        for worker in workers:
            worker.join(timeout=60)
            assert worker.exitcode == 0
        errors = [a[1] for a in answers if a[0] == "error"]
        assert errors == []
        ids = {a[1] for a in answers}
        assert len(ids) == 1, answers  # every caller got the same build
        assert sum(1 for a in answers if a[2]) == 1  # and exactly one created it
        log = EventLog.open(db_url)
        try:
            builds = log.builds(instance_uuid=spec["instance"]["uuid"])
            assert [b.build_id for b in builds] == list(ids)
            assert [b.state for b in builds] == [lifecycle.QUEUED]
            assert len(log.builds(instance_uuid=spec["instance"]["uuid"], states=unfinished)) == 1
        finally:
            log.close()


def test_upgrade_refuses_two_unfinished_builds_of_one_instance(db_url):
    import sqlalchemy as sa
    from alembic import command

    from spawnflow.exceptions import SchemaError
    from spawnflow.persistence import db
    from spawnflow.persistence import tables as t

    engine = db.make_engine(db_url)
    with engine.begin() as conn:
        command.upgrade(db._alembic_config(conn), "0004")
    with engine.begin() as conn:
        for build_id, state in [("dup-1", "INTERRUPTED"), ("dup-2", "REVERTING")]:
            conn.execute(
                sa.insert(t.builds).values(
                    build_id=build_id,
                    instance_uuid="inst-a",
                    instance_name="vm",
                    host="cmp1",
                    state=state,
                    created_at=1.0,
                    updated_at=1.0,
                    spec={},
                    error=None,
                    last_seq=0,
                )
            )
    engine.dispose()
    with pytest.raises(SchemaError, match=r"dup-1 INTERRUPTED on host cmp1.*dup-2 REVERTING"):
        EventLog.open(db_url)
    engine = db.make_engine(db_url)
    try:
        assert db.current_revision(engine) == "0004"
        assert "ux_builds_unfinished_instance" not in {
            i["name"] for i in sa.inspect(engine).get_indexes("builds")
        }
    finally:
        engine.dispose()
