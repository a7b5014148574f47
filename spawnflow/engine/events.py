"""External events (network-vif-plugged): persisted first, then waiters woken.

Waiting reads the log, so an event delivered before the wait began, or while
the agent was down, counts exactly like one delivered during the wait. A read
that finds the log unavailable (a database restarting) holds the build, as a
failed write does: the waiting step's failure is then never recorded, and the
step runs again once the log answers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa

from spawnflow.exceptions import (
    AgentStopping,
    BuildCancelled,
    InvalidEvent,
    SpawnflowError,
    UnknownBuild,
)
from spawnflow.persistence import lifecycle
from spawnflow.persistence.eventlog import EventLog
from spawnflow.persistence.recovery_rules import CANCEL_REQUESTED as CANCEL
from spawnflow.persistence.step_results import VIF_PLUGGED

STATUSES = frozenset({"completed", "failed"})
_MAX_SLEEP = 1.0  # re-read the log at least this often (events from other processes)
_T = TypeVar("_T")


def deliver(
    eventlog: EventLog, instance_uuid: str, name: str, tag: str, status: str = "completed"
) -> str:
    """Persist an external event for the instance's unfinished build; return the build id.

    Works from any process: the agent that runs the build reads it from the log.
    """
    if name != VIF_PLUGGED:
        raise InvalidEvent(f"unknown event name {name!r} (expected {VIF_PLUGGED})")
    if status not in STATUSES:
        raise InvalidEvent(f"event status {status!r} is not one of {sorted(STATUSES)}")
    unfinished = lifecycle.STATES - lifecycle.FINAL
    # Its spawn build: a delete of the instance may be unfinished beside it.
    builds = eventlog.builds(instance_uuid=instance_uuid, states=unfinished, kind=lifecycle.SPAWN)
    if not builds:
        raise UnknownBuild(f"no unfinished build for instance {instance_uuid}")
    build_id = str(builds[-1].build_id)
    eventlog.record_external_event(build_id, name, tag, status)
    return build_id


def request_cancel(eventlog: EventLog, build_id: str) -> sa.Row[Any]:
    """Persist an operator's cancel and return the build's row; the owning agent acts at
    the next step boundary. A build already in a final state is refused.

    Shared by ``Agent.cancel`` and ``spawnflow.engine.admin.cancel_build``.
    """
    row = eventlog.get_build(build_id)
    if lifecycle.is_final(row.state):
        raise SpawnflowError(f"build {row.build_id} is already {row.state}")
    if row.kind == lifecycle.DELETE:
        raise SpawnflowError(
            f"build {row.build_id} is a delete: a delete is never cancelled, it goes on "
            "until the instance is gone"
        )
    eventlog.record_external_event(row.build_id, CANCEL, row.build_id, "requested")
    return row


class EventHub:
    def __init__(
        self,
        eventlog: EventLog,
        cancelled: Callable[[str], bool] | None = None,
        stopping: Callable[[], bool] | None = None,
    ):
        self._log = eventlog
        self._cond = threading.Condition()
        self._closed = False
        self._cancelled = cancelled or self.cancel_requested
        # e.g. the host lease was lost: waits give way as on a stop.
        self._stopping = stopping or (lambda: False)

    def cancel_requested(self, build_id: str) -> bool:
        events = self._read(build_id, lambda: self._log.external_events(build_id))
        return any(e.name == CANCEL for e in events)

    def _read(self, build_id: str, read: Callable[[], _T]) -> _T:
        """``read()`` for a build; an unavailable log holds the build (LogUnavailable)."""
        try:
            return read()
        except Exception as exc:
            self._log.hold(build_id, exc)  # raises when the log is unavailable
            raise

    def notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def received(self, build_id: str, tags: list[str]) -> dict[str, str]:
        """Latest status per expected tag among the persisted events of the build."""
        wanted = set(tags)
        found: dict[str, str] = {}
        for event in self._read(build_id, lambda: self._log.external_events(build_id)):
            if event.name == VIF_PLUGGED and event.subject in wanted:
                found[event.subject] = event.to_state
        return found

    def checkpoint(self, build_id: str) -> None:
        """Raise if a waiting step must stop: the agent stops, or the build was cancelled."""
        if self._closed or self._stopping():
            raise AgentStopping(f"agent stopping while build {build_id} waits")
        if self._cancelled(build_id):
            raise BuildCancelled("cancelled by operator")

    def wait(self, build_id: str, tags: list[str], deadline: float) -> dict[str, str]:
        while True:
            self.checkpoint(build_id)
            found = self.received(build_id, tags)
            remaining = deadline - time.time()
            if len(found) == len(set(tags)) or remaining <= 0:
                return found
            with self._cond:
                self._cond.wait(min(remaining, _MAX_SLEEP))
