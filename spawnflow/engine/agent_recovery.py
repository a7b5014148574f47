"""The agent's recovery: what it does at start and after a log fault with unfinished builds.

A mixin of ``Agent`` (kept apart so the agent module stays one screenful).
Every unfinished build of this host is decided for first, then started: a
spawn build is resumed, rolled back or held as ``[recovery]`` and the
recovery rules decide (``engine.recovery``); a delete build always goes on
(it is never rolled back), from where it stopped, or from its first step
again when its flow changed since it started (every step is idempotent).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from oslo_config import cfg

from spawnflow.engine import log_retry, recovery
from spawnflow.engine.delete_verbs import RESTART
from spawnflow.engine.events import EventHub
from spawnflow.engine.metrics import AgentMetrics
from spawnflow.engine.ownership import HostLease
from spawnflow.engine.queue import UNFINISHED
from spawnflow.engine.runner import FRESH, RESUME, ROLLBACK
from spawnflow.flows import teardown
from spawnflow.flows.spec import BuildSpec
from spawnflow.persistence import lifecycle
from spawnflow.persistence.backend import EventLogBackend
from spawnflow.persistence.eventlog import EventLog

LOG = logging.getLogger(__name__)


class Recovery:
    """Recover this host's unfinished builds (see the module docstring)."""

    conf: cfg.ConfigOpts
    backend: EventLogBackend
    events: EventHub
    lease: HostLease
    metrics: AgentMetrics
    recovered: dict[str, recovery.Decision]
    _stopping: threading.Event
    _log_lost: threading.Event
    _log_waits: log_retry.LogWaits
    _being_deleted: Callable[[Any], bool]  # DeleteVerbs'

    def _log(self) -> EventLog:  # pragma: no cover - Agent's
        raise NotImplementedError

    def _submit(  # pragma: no cover - Agent's
        self, build_id: str, mode: str, reason: str | None = None, spec: BuildSpec | None = None
    ) -> None:
        raise NotImplementedError

    def _recover(self) -> None:
        """Decide for every unfinished build first, then start them (decisions are cheap
        reads and one commit each; running builds would only slow them down)."""
        plan: list[tuple[str, str, str | None]] = []
        for row in self._log().builds(host=self.conf.host, states=UNFINISHED):
            if row.state == lifecycle.QUEUED:
                plan.append((row.build_id, FRESH, None))
                continue
            if row.state != lifecycle.INTERRUPTED:
                self._log().transition_build(
                    row.build_id,
                    lifecycle.INTERRUPTED,
                    payload={"reason": f"found {row.state} at agent start (agent died)"},
                )
            plan.append((row.build_id, *self._plan(row.build_id, row.created_at, row)))
        for build_id, mode, reason in plan:
            if mode != recovery.HOLD:
                self._submit(build_id, mode, reason)

    def _plan(self, build_id: str, created_at: float, row: Any = None) -> tuple[str, str]:
        """Resume or roll back an INTERRUPTED build, as ``[recovery]`` decides: (mode, reason)."""
        row = row or self._log().get_build(build_id)
        if row.kind == lifecycle.DELETE:
            return self._plan_delete(row)
        if self._being_deleted(row):
            # Never forward: its instance's delete waits for it to roll back.
            self.metrics.recovered(recovery.ROLLBACK)
            return ROLLBACK, "recovery: rollback, because its instance is being deleted"
        self.backend.forget(build_id)  # decide on what the log holds
        flow_detail = next(iter(self.backend.get_connection().get_logbook(build_id)))
        decision = recovery.decide_for(
            self.conf, self._log(), build_id, flow_detail, self.events.cancel_requested(build_id)
        )
        LOG.info("build %s was interrupted: %s (%s)", build_id, decision.action, decision.reason)
        self.recovered[build_id] = decision
        self.metrics.recovered(decision.action)
        modes = {recovery.RESUME: RESUME, recovery.HOLD: recovery.HOLD}  # held: not run
        mode = modes.get(decision.action, ROLLBACK)
        return mode, f"recovery: {decision.action}, because {decision.reason}"

    def _plan_delete(self, row: Any) -> tuple[str, str]:
        """A delete goes on: resumed, or run again from its first step if its flow changed."""
        running = teardown.flow_version()
        if row.flow_version != running:
            why = f"the delete flow changed from {row.flow_version} to {running}"
            decision = recovery.Decision(recovery.RESUME, f"{why}: every step runs again")
            mode = RESTART
        else:
            decision = recovery.Decision(recovery.RESUME, "a delete is never rolled back")
            mode = RESUME
        LOG.info("delete %s was interrupted: %s", row.build_id, decision.reason)
        self.recovered[row.build_id] = decision
        self.metrics.recovered(decision.action)
        return mode, f"recovery: {decision.action}, because {decision.reason}"

    def _after_log_fault(self, build_id: str, error: str) -> tuple[str, str | None] | None:
        """Wait for the log, then the build's next run (None: leave it for the next start)."""
        plan = log_retry.recover_in_place(
            self._log(),
            build_id,
            error,
            self.conf,
            self._log_waits,
            plan=self._plan,
            stop=lambda seconds: self._stopping.wait(seconds) or self.lease.lost.is_set(),
        )
        if plan is log_retry.GAVE_UP and not self._stopping.is_set():
            self._log_lost.set()
        return None if plan is log_retry.GAVE_UP or (plan and plan[0] == recovery.HOLD) else plan


__all__ = ["Recovery"]
