"""Waiting out an unavailable event log: retries with backoff, told to readers.

A build whose write failed because the log was unavailable is held by the
log (``persistence.writer``): its step did not run, or its result was not
claimed. The build's thread then waits here, retrying the held writes with
a doubling interval (``[database] retry_interval`` up to
``max_retry_interval``, ``max_retries`` times), and tells readers it is
waiting (``persistence.log_wait``). When the log takes the writes, the agent
recovers the build as a start would; when the agent stops or gives up first,
the next start does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from oslo_config import cfg

from spawnflow.engine.runner import FRESH
from spawnflow.exceptions import LogUnavailable
from spawnflow.persistence import db, faults, lifecycle, log_wait
from spawnflow.persistence.eventlog import EventLog
from spawnflow.persistence.log_wait import LogWait

LOG = logging.getLogger(__name__)
GAVE_UP = ("gave up", None)  # recover_in_place: the log did not answer in time

Run = tuple[str, str | None]  # (runner mode, reason)


class LogWaits:
    """The builds of one agent now waiting for the log (kept in the status file)."""

    def __init__(self, conf: cfg.ConfigOpts):
        self.conf = conf
        self._waits: dict[str, LogWait] = {}
        self._lock = threading.Lock()
        # Called each time a build meets the log unavailable (the metrics count).
        self.on_unavailable: list[Callable[[], None]] = []

    def met_unavailable(self) -> None:
        for callback in self.on_unavailable:
            callback()

    def reserve(self) -> None:
        """Make the status file while there is room (see ``persistence.log_wait``)."""
        log_wait.reserve(self.conf.state_path, self.conf.host)

    def set(self, wait: LogWait) -> None:
        with self._lock:
            self._waits[wait.build_id] = wait
            self._write()

    def clear(self, build_id: str) -> None:
        with self._lock:
            if self._waits.pop(build_id, None) is not None:
                self._write()

    def _write(self) -> None:
        log_wait.write(self.conf.state_path, self.conf.host, list(self._waits.values()))


def wait_for_log(
    build_id: str,
    error: str,
    conf: cfg.ConfigOpts,
    waits: LogWaits,
    *,
    retry: Callable[[], None],
    stop: Callable[[float], bool],
) -> bool:
    """Call ``retry`` (the held writes, then the build's next write) until it goes through.

    True once it did. False when ``stop(seconds)`` (a wait that returns True
    when the agent stops) says so, or after ``[database] max_retries``
    retries; the build is then left as the log last recorded it, for the next
    start to recover.
    """
    since = time.time()
    delay = conf.database.retry_interval
    attempt = 0
    retries = conf.database.max_retries
    LOG.warning("build %s is waiting for the event log: %s", build_id, error)
    waits.met_unavailable()
    try:
        while retries < 0 or attempt < retries:
            waits.set(LogWait(build_id, since, attempt, error))
            if stop(delay):
                return False
            attempt += 1
            try:
                retry()
            except Exception as exc:
                if not unavailable(exc):
                    raise
                waits.met_unavailable()
                error = db.first_line(exc.__cause__ or exc)
                delay = min(delay * 2, conf.database.max_retry_interval)
                continue
            LOG.info(
                "build %s: the event log answers again after %.1fs (%d retries)",
                build_id,
                time.time() - since,
                attempt,
            )
            return True
        LOG.error(
            "build %s: the event log is still unavailable after %d retries (%s); "
            "leaving the build for the next agent start",
            build_id,
            attempt,
            error,
        )
        return False
    finally:
        waits.clear(build_id)


def unavailable(exc: BaseException) -> bool:
    """The log could not take a write or answer a read now (it may later)."""
    return isinstance(exc, LogUnavailable) or faults.unavailable(exc)


def recover_in_place(
    log: EventLog,
    build_id: str,
    error: str,
    conf: cfg.ConfigOpts,
    waits: LogWaits,
    *,
    plan: Callable[[str, float], Run],
    stop: Callable[[float], bool],
) -> Run | None:
    """Wait for the log, mark the build INTERRUPTED, decide: its next run.

    None: nothing more to run (the build is final); GAVE_UP: the agent stopped
    or the log did not answer (the next start recovers the build). The
    decision (``plan(build_id, created_at)``) is part of the retried work: a
    log that fails again while the flow is read is waited for like the first
    failure.
    """
    since = time.time()
    decided: list[Run | None] = []

    def interrupt_and_plan() -> None:
        log.release(build_id)
        row = log.get_build(build_id)
        if row.state in (lifecycle.RUNNING, lifecycle.REVERTING):
            log.transition_build(
                build_id,
                lifecycle.INTERRUPTED,
                payload={
                    "reason": f"the event log was unavailable for "
                    f"{time.time() - since:.1f}s ({error})"
                },
            )
        if row.state == lifecycle.QUEUED:
            decided.append((FRESH, None))
        elif lifecycle.is_final(row.state):
            decided.append(None)
        else:
            decided.append(plan(build_id, row.created_at))

    if not wait_for_log(build_id, error, conf, waits, retry=interrupt_and_plan, stop=stop):
        return GAVE_UP
    return decided[-1]
