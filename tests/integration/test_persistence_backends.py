"""The event log on a real PostgreSQL server and under concurrent writers.

TaskFlow's own persistence suite runs unchanged on PostgreSQL; threads and
processes write builds concurrently on SQLite and PostgreSQL; afterwards the
projections still equal the replayed events and every build's events are in
order.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import uuid

import pytest
import sqlalchemy as sa
import taskflow.engines
from taskflow import task
from taskflow import test as tf_test
from taskflow.patterns import linear_flow
from taskflow.persistence import models
from taskflow.tests.unit.persistence import base as tf_base

from spawnflow.persistence import open_backend, replay
from tests.integration.conftest import DEFAULT_PG_URL

pytestmark = pytest.mark.integration


def fresh_pg_database(url: str) -> str:
    """Create an empty database on the test server; return its URL."""
    name = "sf_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return sa.make_url(url).set(database=name).render_as_string(hide_password=False)


def drop_pg_database(url: str) -> None:
    target = sa.make_url(url)
    admin = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
    admin.dispose()


class PostgresPersistenceContract(tf_test.TestCase, tf_base.PersistenceTestMixin):
    """taskflow.tests.unit.persistence.base.PersistenceTestMixin, unchanged, on PostgreSQL."""

    def _get_connection(self):
        return self.backend.get_connection()

    def setUp(self):
        super().setUp()
        self.url = fresh_pg_database(os.environ.get("SPAWNFLOW_TEST_PG_URL", DEFAULT_PG_URL))
        self.backend = open_backend(self.url)
        with contextlib.closing(self._get_connection()) as conn:
            conn.upgrade()

    def tearDown(self):
        self.backend.close()
        drop_pg_database(self.url)
        super().tearDown()


class Step(task.Task):
    def execute(self) -> str:
        return self.name

    def revert(self, *args, **kwargs) -> None:
        pass


class Fails(Step):
    def execute(self) -> str:
        raise RuntimeError("boom")


def run_flows(url: str, count: int, fail_every: int = 3) -> None:
    backend = open_backend(url)
    for i in range(count):
        book = models.LogBook("c")
        flow_detail = models.FlowDetail("f", uuid=models.uuidutils.generate_uuid())
        book.add(flow_detail)
        with contextlib.closing(backend.get_connection()) as conn:
            conn.save_logbook(book)
        steps = [Step(name=f"s{j}") for j in range(4)]
        if i % fail_every == 0:
            steps.append(Fails(name="last"))
        engine = taskflow.engines.load(
            linear_flow.Flow("f").add(*steps),
            book=book,
            flow_detail=flow_detail,
            backend=backend,
            engine="serial",
        )
        with contextlib.suppress(RuntimeError):
            engine.run()
    backend.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path, postgres_url):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/concurrent.sqlite"
        return
    url = fresh_pg_database(postgres_url)
    yield url
    drop_pg_database(url)


def check_log(url: str, books: int) -> None:
    backend = open_backend(url)
    log = backend.eventlog
    assert replay.replay(log) == replay.current(log)
    with log.engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from logbooks")).scalar() == books
        rows = conn.execute(sa.text("select build_id, seq, ts from events order by seq"))
        last: dict[str, float] = {}
        for build_id, _seq, ts in rows:
            # Within one build, later events never carry earlier times.
            assert ts >= last.get(build_id, 0.0)
            last[build_id] = ts
        states = dict(
            conn.execute(sa.text("select state, count(*) from flowdetails group by state")).all()
        )
    assert set(states) <= {"SUCCESS", "REVERTED"}
    backend.close()


def test_threads_write_concurrently(db_url):
    open_backend(db_url).close()  # schema first, as an agent start would
    threads = [threading.Thread(target=run_flows, args=(db_url, 6)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    check_log(db_url, 36)


def test_processes_write_concurrently(db_url):
    open_backend(db_url).close()
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=run_flows, args=(db_url, 5)) for _ in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    check_log(db_url, 15)
