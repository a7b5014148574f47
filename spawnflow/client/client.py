"""``Client``: the fleet's front door (see the package docstring)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

from spawnflow.engine.events import request_cancel
from spawnflow.engine.outcome import Outcome
from spawnflow.engine.queue import check_host, queue_build, queue_delete
from spawnflow.exceptions import LogUnavailable
from spawnflow.flows.spec import BuildSpec, parse_spec
from spawnflow.persistence import db, faults, lifecycle
from spawnflow.persistence.backend import EventLogBackend
from spawnflow.persistence.eventlog import EventLog


@contextlib.contextmanager
def _log_errors() -> Iterator[None]:
    """One exception for "the log cannot answer now", whichever layer met it (psycopg
    itself, SQLAlchemy, the event log): LogUnavailable; nothing was queued twice."""
    try:
        yield
    except LogUnavailable:
        raise
    except Exception as exc:
        if not faults.unavailable(exc):
            raise
        raise LogUnavailable(
            f"the event log is unavailable now ({db.first_line(exc)}); try again"
        ) from None


class Client:
    """Queue builds and deletes in a spawnflow event log for hosts' agents to run.

    The database must be one an agent (or ``spawnflow db upgrade``) made:
    a client never creates or upgrades a schema.
    """

    def __init__(self, db_url: str, poll_interval: float = 0.2) -> None:
        self._log = EventLog.open(db_url, upgrade=False)
        self._backend = EventLogBackend(eventlog=self._log)
        self.poll_interval = poll_interval

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._backend.close()
        self._log.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start_build(
        self, spec: BuildSpec | dict[str, Any] | str | os.PathLike[str], host: str
    ) -> str:
        """Queue a build of ``spec`` for ``host``'s agent; return its id at once.

        Raises LogUnavailable while the log cannot answer (a PostgreSQL restart):
        try again; a retry never makes a second build.

        The instance's unfinished build on that host, or its ACTIVE one, is
        returned instead of a second build; one on another host is an error,
        and so is an instance being deleted.
        """
        host = check_host(host)
        with _log_errors():
            build_id, _created = queue_build(self._log, self._backend, parse_spec(spec), host)
        return build_id

    def delete_instance(self, instance_uuid: str, force: bool = False) -> str:
        """Queue a delete of the instance for the agent of its host; return its id."""
        with _log_errors():
            row, _created = queue_delete(self._log, self._backend, instance_uuid, force=force)
        return str(row.build_id)

    def cancel(self, build_id: str) -> None:
        """Ask the owning agent to roll the build back from its next step boundary."""
        with _log_errors():
            request_cancel(self._log, build_id)

    def state(self, build_id: str) -> str:
        with _log_errors():
            return str(self._log.get_build(build_id).state)

    def wait(self, build_id: str, timeout: float | None = None) -> Outcome:
        """Follow the log until the build is final (or ``timeout`` s pass); its outcome."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with _log_errors():
                row = self._log.get_build(build_id)
            if lifecycle.is_final(row.state) or (
                deadline is not None and time.monotonic() >= deadline
            ):
                return Outcome(build_id=build_id, state=row.state, error=row.error)
            time.sleep(self.poll_interval)
