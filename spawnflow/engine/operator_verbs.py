"""The agent's side of the operator verbs: ``Agent.retry_build``, ``resolve_build``,
``rollback_build`` and ``pick_up_requests``.

A mixin of ``Agent`` (kept apart so the agent module stays one screenful of
lifecycle): the requests themselves are ``engine.operator``; this is where the
agent that owns the host carries them out. ``spawnflow agent`` calls
``pick_up_requests`` on every poll, so a request made from another process
(``spawnflow build retry``) is acted on within a poll interval.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading

from oslo_config import cfg

from spawnflow.engine import operator
from spawnflow.engine.delete_runner import RESTART
from spawnflow.engine.events import EventHub
from spawnflow.engine.log_retry import unavailable
from spawnflow.engine.runner import ROLLBACK
from spawnflow.flows.spec import BuildSpec
from spawnflow.persistence import db, lifecycle
from spawnflow.persistence.backend import EventLogBackend
from spawnflow.persistence.eventlog import EventLog

LOG = logging.getLogger(__name__)


class OperatorVerbs:
    """Retry, resolve and roll back builds on an operator's word (see ``engine.operator``)."""

    conf: cfg.ConfigOpts
    events: EventHub
    backend: EventLogBackend
    _lock: threading.Lock
    _stopping: threading.Event
    _cancelled: set[str]
    _futures: dict[str, concurrent.futures.Future[str]]
    _refused: set[str]  # retries that failed to begin: not tried again by this agent

    def _log(self) -> EventLog:  # pragma: no cover - Agent's
        raise NotImplementedError

    def _submit(  # pragma: no cover - Agent's
        self, build_id: str, mode: str, reason: str | None = None, spec: BuildSpec | None = None
    ) -> None:
        raise NotImplementedError

    def retry_build(self, build_id: str, note: str | None = None) -> None:
        """Retry a FAILED build's rollback from where it failed (the cause fixed first).

        Recorded with ``note`` and who asked; this agent starts it at once when
        it owns the build's host, else the owning agent does. ``wait`` follows it.
        """
        operator.request_retry(self._log(), build_id, note)
        self.pick_up_requests()

    def resolve_build(self, build_id: str, note: str) -> None:
        """Declare a FAILED build dealt with by hand: FAILED -> RESOLVED, with ``note``."""
        operator.resolve(self._log(), build_id, note)

    def rollback_build(self, build_id: str, note: str | None = None) -> None:
        """Roll a RUNNING, QUEUED or INTERRUPTED build back now (``cancel``, with a note)."""
        operator.request_rollback(self._log(), build_id, note)
        with self._lock:
            self._cancelled.add(build_id)
        self.events.notify()
        self.pick_up_requests()

    def pick_up_requests(self) -> list[str]:
        """Carry out this host's pending operator requests; return the builds started.

        A retry of a FAILED build, or a rollback of an INTERRUPTED build no
        thread of this agent runs (held for the operator). A running build's
        rollback needs nothing here: its thread reads the cancel itself.
        """
        log, host = self._log(), self.conf.host
        try:
            retries = operator.pending_retries(log, host)
            rollbacks = operator.pending_rollbacks(log, host)
        except Exception as exc:
            if not unavailable(exc):
                raise
            LOG.warning("cannot look for operator requests: %s", db.first_line(exc))
            return []
        started: list[str] = []
        with self._lock:
            if self._stopping.is_set():
                return started
            for build_id in retries:
                # Started here, not in the build's thread: the build is REVERTING
                # before it is submitted, so a second poll cannot pick it up again.
                if build_id in self._futures or build_id in self._refused:
                    continue
                try:
                    began = operator.begin_retry(log, self.backend, build_id)
                except Exception as exc:
                    # One bad request must not stop the agent: said once, then
                    # left (the next start tries it again).
                    self._refused.add(build_id)
                    LOG.error("cannot retry build %s: %s", build_id, exc)
                    continue
                if began:
                    kind = log.get_build(build_id).kind
                    self._submit(build_id, RESTART if kind == lifecycle.DELETE else ROLLBACK)
                    started.append(build_id)
            for build_id in rollbacks:
                running = self._futures.get(build_id)
                # A done future is a build this agent left INTERRUPTED (held).
                if running is None or running.done():
                    self._submit(build_id, ROLLBACK, "rolled back on an operator's request")
                    started.append(build_id)
        return started


__all__ = ["OperatorVerbs"]
