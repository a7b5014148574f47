"""Durability cost: a 10-task no-op linear flow on each persistence backend.

Same process, same run, same flow: TaskFlow's in-memory backend is the
baseline; TaskFlow's stock SQLAlchemy backend on SQLite; ours on SQLite (WAL,
synchronous=FULL) and, when a server answers, on PostgreSQL. Prints the median
wall time per flow, SQL statements and commits per flow, and ratios.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import sqlalchemy as sa
import taskflow.engines
from taskflow import task
from taskflow.patterns import linear_flow
from taskflow.persistence import backends as tf_backends
from taskflow.persistence import models

from spawnflow.persistence import open_backend

TASKS = 10
DEFAULT_PG_URL = "postgresql+psycopg://spawnflow:spawnflow@127.0.0.1:5432/spawnflow_test"


class NoOp(task.Task):
    def execute(self) -> int:
        return 1

    def revert(self, *args: object, **kwargs: object) -> None:
        pass


def make_flow() -> linear_flow.Flow:
    return linear_flow.Flow("bench").add(*(NoOp(name=f"t{i}") for i in range(TASKS)))


@dataclass
class Counts:
    statements: int = 0
    commits: int = 0


@contextlib.contextmanager
def counting(engine: sa.Engine | None) -> Iterator[Counts]:
    counts = Counts()
    if engine is None:
        yield counts
        return

    def on_execute(*_args: object) -> None:
        counts.statements += 1

    def on_commit(*_args: object) -> None:
        counts.commits += 1

    sa.event.listen(engine, "before_cursor_execute", on_execute)
    sa.event.listen(engine, "commit", on_commit)
    try:
        yield counts
    finally:
        sa.event.remove(engine, "before_cursor_execute", on_execute)
        sa.event.remove(engine, "commit", on_commit)


def run_once(backend: object) -> None:
    book = models.LogBook("bench")
    flow_detail = models.FlowDetail("bench", uuid=models.uuidutils.generate_uuid())
    book.add(flow_detail)
    with contextlib.closing(backend.get_connection()) as conn:
        conn.save_logbook(book)
    engine = taskflow.engines.load(make_flow(), flow_detail=flow_detail, book=book,
                                   backend=backend, engine="serial")
    engine.run()


@dataclass
class Result:
    name: str
    median_ms: float
    statements: float
    commits: float


def measure(name: str, backend: object, engine: sa.Engine | None, runs: int) -> Result:
    for _ in range(3):  # warm caches, compile SQL
        run_once(backend)
    times = []
    with counting(engine) as counts:
        for _ in range(runs):
            start = time.perf_counter()
            run_once(backend)
            times.append(time.perf_counter() - start)
    return Result(name, statistics.median(times) * 1000, counts.statements / runs,
                  counts.commits / runs)


def pg_available(url: str) -> bool:
    engine = sa.create_engine(url)
    try:
        with engine.connect():
            return True
    except Exception:  # noqa: BLE001 - any failure means "no server to measure"
        return False
    finally:
        engine.dispose()


def backends(tmp: str) -> Iterator[tuple[str, Callable[[], tuple[object, sa.Engine | None]]]]:
    yield "taskflow in-memory", lambda: (tf_backends.fetch({"connection": "memory://"}), None)

    def stock() -> tuple[object, sa.Engine | None]:
        backend = tf_backends.fetch({"connection": f"sqlite:///{tmp}/stock.sqlite"})
        with contextlib.closing(backend.get_connection()) as conn:
            conn.upgrade()
        return backend, backend.engine

    yield "taskflow sqlalchemy/sqlite", stock

    def ours_sqlite() -> tuple[object, sa.Engine | None]:
        backend = open_backend(f"sqlite:///{tmp}/ours.sqlite")
        return backend, backend.eventlog.engine

    yield "spawnflow sqlite (WAL, FULL)", ours_sqlite
    pg_url = os.environ.get("SPAWNFLOW_BENCH_PG_URL", DEFAULT_PG_URL)
    if pg_available(pg_url):
        def ours_pg() -> tuple[object, sa.Engine | None]:
            engine = sa.create_engine(pg_url)
            with engine.begin() as conn:
                conn.execute(sa.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
            engine.dispose()
            backend = open_backend(pg_url)
            return backend, backend.eventlog.engine

        yield "spawnflow postgresql", ours_pg
    else:
        print(f"(no PostgreSQL at {sa.make_url(pg_url).render_as_string(hide_password=True)}"
              "; run tools/start-postgres.sh to include it)")


def main(runs: int = 30) -> list[Result]:
    results = []
    with tempfile.TemporaryDirectory(prefix="spawnflow-bench-") as tmp:
        for name, make in backends(tmp):
            backend, engine = make()
            results.append(measure(name, backend, engine, runs))
            backend.close()
    base = results[0].median_ms
    ours = next(r for r in results if r.name.startswith("spawnflow sqlite"))
    print(f"{TASKS}-task no-op linear flow, serial engine, median of {runs} runs")
    print(f"{'backend':<30} {'ms/flow':>9} {'x in-mem':>9} {'SQL/flow':>9} {'commits':>8}")
    for r in results:
        print(f"{r.name:<30} {r.median_ms:9.2f} {r.median_ms / base:9.2f} "
              f"{r.statements:9.1f} {r.commits:8.1f}")
    stock = next(r for r in results if r.name.startswith("taskflow sqlalchemy"))
    print(f"stock / ours (sqlite): {stock.median_ms / ours.median_ms:.1f}x")
    return results
