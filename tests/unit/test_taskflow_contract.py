"""TaskFlow's own persistence test suite, unchanged, against our backend (SQLite)."""

import contextlib

from taskflow import test
from taskflow.tests.unit.persistence import base

from spawnflow.persistence import open_backend


class EventLogPersistenceTest(test.TestCase, base.PersistenceTestMixin):
    def _get_connection(self):
        return self.backend.get_connection()

    def setUp(self):
        super().setUp()
        path = self.useFixture(__import__("fixtures").TempDir()).path
        self.backend = open_backend(f"sqlite:///{path}/contract.sqlite")
        with contextlib.closing(self._get_connection()) as conn:
            conn.upgrade()

    def tearDown(self):
        with contextlib.closing(self._get_connection()) as conn:
            conn.clear_all()
        self.backend.close()
        super().tearDown()
