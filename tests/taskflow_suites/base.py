"""How TaskFlow's own engine suites run on the event log (the test modules beside this one).

TaskFlow's ``test_engines``, ``test_retries`` and ``test_suspend`` make every
engine in ``_make_engine`` with ``self.backend``, a memory backend set by
``utils.EngineTestBase.setUp``. ``OnEventLog``, put before TaskFlow's class,
swaps in an ``EventLogBackend`` on a fresh SQLite file (``OnPostgres`` on a
PostgreSQL database), leaves TaskFlow's tests unchanged, and after each test
checks what the log holds:

* the projections equal the replayed events;
* every flow and atom event carries its logbook's uuid as build id (TaskFlow
  makes its own logbooks; our events take the build id from them);
* override events appear in exactly the tests listed in ``STAGED``.

``STAGED`` are the tests that stage a crash by setting states through
``Storage`` (``storage.save('t', 5)`` on a PENDING atom, ...), which no engine
does: the log refuses those transitions unless they are forced, so these
tests run inside ``transitions.overrides(...)`` and each forced state is
recorded as an override. Their engine runs go outside the scope again
(``overrides(None)``): what the engine itself writes is checked as usual.

The parallel classes share one thread pool per class: an engine that makes
its own pool shuts it down at the end of every run, and futurist's workers
take a second each to notice, which would make the parallel suites three
minutes long.

Deliberately not run here (see the architecture page, *TaskFlow transitions
on the event log*):

* ``ParallelEngineWithEventletTest`` (all three modules): eventlet is not
  installed and spawnflow never runs green threads; TaskFlow skips them too.
* ``WorkerBasedEngineTest`` (``test_engines``): the worker-based engine runs
  atoms in workers over a message transport, which spawnflow never does (it
  runs the serial engine; the parallel one is TaskFlow's other in-process
  engine, run here).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import shutil
import tempfile
import unittest
from pathlib import Path
from typing import Any, ClassVar

import fixtures
import futurist
import sqlalchemy as sa

from spawnflow.persistence import replay, transitions
from spawnflow.persistence import tables as t
from spawnflow.persistence.backend import EventLogBackend
from spawnflow.persistence.eventlog import ATOM, FLOW, LOGBOOK, EventLog

OVERRIDE_REASON = "TaskFlow's test stages a crash through Storage"

# test_retries: the tests that set states through Storage that no engine sets.
RETRIES_STAGED = frozenset(
    {
        "test_resume_flow_that_had_been_interrupted_during_retrying",  # PENDING -> RETRYING
        "test_resume_flow_that_should_be_retried",  # PENDING -> SUCCESS, REVERTED
        "test_resumption_on_crash_after_task_failure",  # PENDING -> SUCCESS, FAILURE
        "test_resumption_on_crash_after_retry_queried",
        "test_resumption_on_crash_after_retry_updated",
        "test_resumption_on_crash_after_task_updated",
        "test_resumption_on_crash_after_revert_scheduled",
        "test_nested_provides_graph_reverts_correctly",  # PENDING -> SUCCESS
        "test_nested_provides_graph_retried_correctly",  # PENDING -> SUCCESS, FAILURE
    }
)


# These suites check what TaskFlow's engines write, not the disk (the
# durability tests and the crash tests do): their files are on a tmpfs when
# there is one, where a commit's fsync costs nothing and the suites take half
# the time. Read at import: TaskFlow's TestCase points tempfile at a directory
# of its own for each test, removed after it.
_SHM = Path("/dev/shm")
_TMP = str(_SHM) if _SHM.is_dir() and os.access(_SHM, os.W_OK) else tempfile.gettempdir()


@functools.cache
def _migrated_sqlite() -> Path:
    directory = Path(tempfile.mkdtemp(prefix="spawnflow-suites-", dir=_TMP))
    atexit.register(shutil.rmtree, directory, True)
    EventLog.open(f"sqlite:///{directory}/migrated.sqlite").close()
    return directory / "migrated.sqlite"


class OnEventLog:
    """Mixin before a TaskFlow engine test class: ``self.backend`` is an EventLogBackend."""

    STAGED: ClassVar[frozenset[str]] = frozenset()
    backend: Any
    _testMethodName: str

    def database_url(self) -> str:
        """A fresh SQLite file: a copy of one migrated once (migrating each is 0.1 s)."""
        directory = self.useFixture(fixtures.TempDir(_TMP)).path  # type: ignore[attr-defined]
        path = shutil.copy(_migrated_sqlite(), f"{directory}/log.sqlite")
        return f"sqlite:///{path}"

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.backend.close()  # the memory backend EngineTestBase made
        self.backend = EventLogBackend({"connection": self.database_url()})
        with self.backend.eventlog.engine.connect() as conn:
            self._first_seq = conn.execute(sa.select(sa.func.max(t.events.c.seq))).scalar() or 0
        if self._testMethodName in self.STAGED:
            scope = contextlib.ExitStack()
            scope.enter_context(transitions.overrides(OVERRIDE_REASON))
            self.addCleanup(scope.close)  # type: ignore[attr-defined]

    def tearDown(self) -> None:
        try:
            self.check_log()
        finally:
            super().tearDown()  # type: ignore[misc]

    def _make_engine(self, *args: Any, **kwargs: Any) -> Any:
        engine = super()._make_engine(*args, **kwargs)  # type: ignore[misc]
        if self._testMethodName in self.STAGED:
            run, run_iter = engine.run, engine.run_iter

            def checked_run(*a: Any, **k: Any) -> Any:
                with transitions.overrides(None):
                    return run(*a, **k)

            def checked_run_iter(*a: Any, **k: Any) -> Any:
                with transitions.overrides(None):
                    yield from run_iter(*a, **k)

            engine.run, engine.run_iter = checked_run, checked_run_iter
        return engine

    def check_log(self) -> None:
        log = self.backend.eventlog
        log.flush(all_builds=True)
        assert replay.replay(log) == replay.current(log), "projections differ from the events"
        with log.engine.connect() as conn:
            events = list(
                conn.execute(
                    sa.select(t.events)
                    .where(t.events.c.seq > self._first_seq)
                    .order_by(t.events.c.seq)
                )
            )
        books: set[str] = set()
        overrides = 0
        for event in events:
            payload = event.payload if isinstance(event.payload, dict) else {}
            if event.kind == LOGBOOK and event.to_state is None:
                books.add(event.subject)
            elif event.kind in (FLOW, ATOM):
                assert event.build_id in books, (event.seq, event.build_id, "not a logbook's uuid")
                overrides += payload.get(transitions.KIND_KEY) == transitions.OVERRIDE
        staged = self._testMethodName in self.STAGED
        assert bool(overrides) == staged, (
            f"{overrides} override events; {self._testMethodName} is "
            + ("" if staged else "not ")
            + "listed as staging states through Storage"
        )


class SharedPool:
    """Mixin before a parallel engine class: its engines share one thread pool."""

    _EXECUTOR_WORKERS: ClassVar[int]
    _pool: ClassVar[futurist.ThreadPoolExecutor]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()  # type: ignore[misc]
        cls._pool = futurist.ThreadPoolExecutor(max_workers=cls._EXECUTOR_WORKERS)

    @classmethod
    def tearDownClass(cls) -> None:
        cls._pool.shutdown(wait=True)
        super().tearDownClass()  # type: ignore[misc]

    def _make_engine(self, *args: Any, executor: Any = None, **kwargs: Any) -> Any:
        return super()._make_engine(  # type: ignore[misc]
            *args, executor=executor or self._pool, **kwargs
        )


def keep_only(names: frozenset[str]) -> Any:
    """Class decorator: of a TaskFlow class's tests, run only ``names`` (a subset).

    unittest's loader (which pytest uses for these classes) lists only callable
    ``test*`` attributes, so the others are set to None.
    """

    def apply(cls: type) -> type:
        tests = set(unittest.TestLoader().getTestCaseNames(cls))
        assert names <= tests, f"not tests of {cls.__name__}: {sorted(names - tests)}"
        for name in tests - names:
            setattr(cls, name, None)
        return cls

    return apply


def payloads(backend: EventLogBackend, kind: str = ATOM) -> list[tuple[Any, ...]]:
    """(name, from, to, payload) of every event of ``kind``, in order (for our own tests)."""
    backend.eventlog.flush(all_builds=True)
    with backend.eventlog.engine.connect() as conn:
        rows = conn.execute(
            sa.select(t.events).where(t.events.c.kind == kind).order_by(t.events.c.seq)
        )
        return [
            (
                r.name,
                r.from_state,
                r.to_state,
                r.payload if isinstance(r.payload, dict) else json.loads(r.payload),
            )
            for r in rows
        ]
