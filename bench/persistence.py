"""Durability cost: a 10-task no-op linear flow on each persistence backend.

Same process, same run, same flow: TaskFlow's in-memory backend is the
baseline; TaskFlow's stock SQLAlchemy backend on SQLite; ours on SQLite (WAL,
synchronous=FULL) and, when a server answers, on PostgreSQL. The backends take
turns flow by flow (round robin), so a slow spell of the machine weighs on all
of them alike. Prints the median wall time per flow, the SQL statements and
commits the database driver saw per flow, and ratios.

Ours is measured twice on SQLite: on a fresh log (the first flows grow the
write-ahead log file, and growing a file costs every fsync a metadata journal
commit) and in steady state (after the WAL has been checkpointed and is being
reused, as in a running agent).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import sqlalchemy as sa
import taskflow.engines
from taskflow import task
from taskflow.patterns import linear_flow
from taskflow.persistence import backends as tf_backends
from taskflow.persistence import models

from spawnflow.persistence import open_backend
from spawnflow.persistence import tables as t

TASKS = 10
RUNS = 30
# SQLite checkpoints its WAL every 1000 pages and then reuses the file; ~60
# flows of ours get past the first checkpoint.
STEADY_WARMUP = 60
FRESH_FLOWS = 10
DEFAULT_PG_URL = "postgresql+psycopg://spawnflow:spawnflow@127.0.0.1:5432/spawnflow_test"


class NoOp(task.Task):
    def execute(self) -> int:
        return 1

    def revert(self, *args: object, **kwargs: object) -> None:
        pass


def make_flow() -> linear_flow.Flow:
    return linear_flow.Flow("bench").add(*(NoOp(name=f"t{i}") for i in range(TASKS)))


# -- what the database driver runs (every path: SQLAlchemy's and our raw one) --------


@dataclass
class Counts:
    statements: int = 0
    commits: int = 0


class _Counter:
    """The counts of the backend being run now (None: not counting)."""

    current: Counts | None = None

    @classmethod
    def statement(cls, sql: str) -> None:
        if cls.current is None:
            return
        verb = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else ""
        if verb == "COMMIT":
            cls.current.commits += 1
        elif verb not in ("BEGIN", "ROLLBACK", "SAVEPOINT", "RELEASE"):
            cls.current.statements += 1


_sqlite_connect = sqlite3.connect


def _traced_sqlite_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
    conn = _sqlite_connect(*args, **kwargs)
    conn.set_trace_callback(_Counter.statement)
    return conn


class _CountingCursor(psycopg.Cursor):
    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        _Counter.statement(str(query) if isinstance(query, str) else "SELECT")
        return super().execute(query, params, **kwargs)

    def executemany(self, query: Any, params_seq: Any, **kwargs: Any) -> Any:
        params_seq = list(params_seq)
        for _ in params_seq:
            _Counter.statement(str(query) if isinstance(query, str) else "SELECT")
        return super().executemany(query, params_seq, **kwargs)


class _CountingConnection(psycopg.Connection):
    def commit(self) -> None:
        _Counter.statement("COMMIT")
        super().commit()


@contextlib.contextmanager
def driver_counting() -> Iterator[None]:
    """Count at the DBAPI drivers, for every connection opened inside the block."""
    # SQLAlchemy's driver is sqlite3.dbapi2; the package re-exports it.
    sqlite3.connect = sqlite3.dbapi2.connect = _traced_sqlite_connect
    pg_connect = psycopg.connect

    def counting_pg_connect(*args: Any, **kwargs: Any) -> psycopg.Connection:
        kwargs.setdefault("cursor_factory", _CountingCursor)
        return _CountingConnection.connect(*args, **kwargs)

    psycopg.connect = counting_pg_connect
    try:
        yield
    finally:
        sqlite3.connect = sqlite3.dbapi2.connect = _sqlite_connect
        psycopg.connect = pg_connect


# -- the runs --------------------------------------------------------------------


def run_once(backend: object) -> None:
    book = models.LogBook("bench")
    flow_detail = models.FlowDetail("bench", uuid=models.uuidutils.generate_uuid())
    book.add(flow_detail)
    with contextlib.closing(backend.get_connection()) as conn:
        conn.save_logbook(book)
    engine = taskflow.engines.load(
        make_flow(), flow_detail=flow_detail, book=book, backend=backend, engine="serial"
    )
    engine.run()


@dataclass
class Subject:
    name: str
    backend: object
    warmup: int
    times: list[float] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)

    def run(self, counted: bool) -> None:
        _Counter.current = self.counts if counted else None
        try:
            start = time.perf_counter()
            run_once(self.backend)
            elapsed = time.perf_counter() - start
        finally:
            _Counter.current = None
        if counted:
            self.times.append(elapsed)


@dataclass
class Result:
    name: str
    median_ms: float
    statements: float
    commits: float


def pg_available(url: str) -> bool:
    engine = sa.create_engine(url)
    try:
        with engine.connect():
            return True
    except Exception:
        return False
    finally:
        engine.dispose()


def fenced(backend: Any) -> Any:
    """``backend`` as an agent's: a lease row for a host, every write checking its epoch."""
    log = backend.eventlog
    with log.transaction() as conn:
        conn.execute(
            sa.insert(t.agents).values(
                host="bench",
                agent_id="bench",
                pid=os.getpid(),
                started_at=0.0,
                heartbeat_at=time.time(),
                epoch=1,
            )
        )
    log.fence("bench", 1)
    return backend


def backends(tmp: str) -> Iterator[tuple[str, int, Callable[[], object]]]:
    """(name, warm-up flows, factory) of every backend measured."""
    yield "taskflow in-memory", 3, lambda: tf_backends.fetch({"connection": "memory://"})

    def stock() -> object:
        backend = tf_backends.fetch({"connection": f"sqlite:///{tmp}/stock.sqlite"})
        with contextlib.closing(backend.get_connection()) as conn:
            conn.upgrade()
        return backend

    yield "taskflow sqlalchemy/sqlite", 3, stock
    yield "spawnflow sqlite, fresh log", 0, lambda: open_backend(f"sqlite:///{tmp}/fresh.sqlite")
    yield (
        "spawnflow sqlite (WAL, FULL)",
        STEADY_WARMUP,
        lambda: open_backend(f"sqlite:///{tmp}/ours.sqlite"),
    )
    yield (
        "spawnflow sqlite, fenced",
        STEADY_WARMUP,
        lambda: fenced(open_backend(f"sqlite:///{tmp}/fenced.sqlite")),
    )
    pg_url = os.environ.get("SPAWNFLOW_BENCH_PG_URL", DEFAULT_PG_URL)
    if pg_available(pg_url):

        def ours_pg() -> object:
            engine = sa.create_engine(pg_url)
            with engine.begin() as conn:
                conn.execute(sa.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
            engine.dispose()
            return open_backend(pg_url)

        yield "spawnflow postgresql", 10, ours_pg
        # The same database (made just above): its own logbooks, plus the lease row.
        yield "spawnflow postgresql, fenced", 10, lambda: fenced(open_backend(pg_url))
    else:
        print(
            f"(no PostgreSQL at {sa.make_url(pg_url).render_as_string(hide_password=True)}"
            "; run tools/start-postgres.sh to include it)"
        )


def measure(tmp: str, runs: int) -> list[Result]:
    subjects = [Subject(name, make(), warmup) for name, warmup, make in backends(tmp)]
    try:
        for subject in subjects:
            for _ in range(subject.warmup):
                subject.run(counted=False)
        fresh = next(s for s in subjects if s.name.endswith("fresh log"))
        for round_ in range(runs):
            for subject in subjects:
                if subject is fresh and round_ >= FRESH_FLOWS:
                    continue  # only its first flows are "fresh"
                subject.run(counted=True)
    finally:
        for subject in subjects:
            subject.backend.close()
    return [
        Result(
            s.name,
            statistics.median(s.times) * 1000,
            s.counts.statements / len(s.times),
            s.counts.commits / len(s.times),
        )
        for s in subjects
    ]


def main(runs: int = RUNS) -> list[Result]:
    with driver_counting(), tempfile.TemporaryDirectory(prefix="spawnflow-bench-") as tmp:
        results = measure(tmp, runs)
    base = results[0].median_ms
    ours = next(r for r in results if r.name.startswith("spawnflow sqlite (WAL"))
    stock = next(r for r in results if r.name.startswith("taskflow sqlalchemy"))
    print(
        f"{TASKS}-task no-op linear flow, serial engine, median of {runs} runs "
        f"(fresh log: its first {FRESH_FLOWS} flows), backends taking turns"
    )
    print(f"{'backend':<30} {'ms/flow':>9} {'x in-mem':>9} {'SQL/flow':>9} {'commits':>8}")
    for r in results:
        print(
            f"{r.name:<30} {r.median_ms:9.2f} {r.median_ms / base:9.2f} "
            f"{r.statements:9.1f} {r.commits:8.1f}"
        )
    print(f"stock / ours (sqlite, steady state): {stock.median_ms / ours.median_ms:.1f}x")
    return results


if __name__ == "__main__":
    main()
