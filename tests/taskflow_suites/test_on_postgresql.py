"""A subset of TaskFlow's engine suites on PostgreSQL (serial engine), unchanged.

The tests that reset engines, resume suspended flows and stage crashes
through ``Storage`` (the transitions beyond TaskFlow's tables), on one fresh
database per class; TaskFlow's own tearDown clears the projections between
tests, and the log checks (``base.OnEventLog``) run after each. The whole
suites run on SQLite (the other modules here); this subset takes a few
seconds. Needs the test server (``tools/start-postgres.sh``): without it the
classes fail, they never skip.
"""

from __future__ import annotations

import os
from typing import ClassVar

from taskflow.tests.unit import test_engines, test_retries, test_suspend

from tests.integration.conftest import DEFAULT_PG_URL
from tests.integration.test_persistence_backends import drop_pg_database, fresh_pg_database
from tests.taskflow_suites.base import RETRIES_STAGED, OnEventLog, keep_only


class OnPostgres(OnEventLog):
    url: ClassVar[str]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()  # type: ignore[misc]
        cls.url = fresh_pg_database(os.environ.get("SPAWNFLOW_TEST_PG_URL") or DEFAULT_PG_URL)

    @classmethod
    def tearDownClass(cls) -> None:
        drop_pg_database(cls.url)
        super().tearDownClass()  # type: ignore[misc]

    def database_url(self) -> str:
        return self.url


@keep_only(
    frozenset(
        {
            "test_completed_reset_run_again",
            "test_failed_reset_run_again",
            "test_suspended_reset_run_again",
            "test_graph_flow_conditional_ignore_reset",
            "test_sequential_flow_iter_suspend_resume",
        }
    )
)
class SerialEngineResetsOnPostgres(OnPostgres, test_engines.SerialEngineTest):
    pass


@keep_only(RETRIES_STAGED)
class SerialRetriesStagedOnPostgres(OnPostgres, test_retries.SerialEngineTest):
    STAGED = RETRIES_STAGED


class SerialSuspendOnPostgres(OnPostgres, test_suspend.SerialEngineTest):
    pass
