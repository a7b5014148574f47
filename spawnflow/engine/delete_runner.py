"""Runs one delete build: the delete flow on a TaskFlow engine loaded from the event log.

Lifecycle transitions are written before the work they announce: DELETING
before the first step (or the step a crash interrupted, or, for a retry or a
delete whose flow changed, the first step again), then DELETED or FAILED. A
delete is never rolled back; an agent stop suspends it at the next step
boundary and leaves it INTERRUPTED, and the next start resumes it.

On DELETED every spawn build of the instance that the delete tore down
(ACTIVE, FAILED or RESOLVED; ``lifecycle.TORN_DOWN``) goes to DELETED first,
so the instance may be built again. The final event's payload lists what was
left because it was not the instance's own (``left``) and what each step
removed; a FAILED delete's error names what could not be removed and the
steps it did not reach.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from taskflow import states as tf_states

from spawnflow.engine import log_context
from spawnflow.engine.runner import Control, ProgressCallback, describe, load_engine
from spawnflow.exceptions import AgentStopping
from spawnflow.flows.teardown import DeleteContext, build_delete_flow, step_names
from spawnflow.persistence import lifecycle
from spawnflow.persistence.backend import EventLogBackend
from spawnflow.persistence.eventlog import EventLog

LOG = logging.getLogger(__name__)

FRESH, RESUME, RESTART = "fresh", "resume", "restart"  # RESTART: every step again


class _DeleteRun:
    def __init__(
        self,
        ctx: DeleteContext,
        backend: EventLogBackend,
        control: Control,
        progress: ProgressCallback | None,
    ) -> None:
        self.log: EventLog = backend.eventlog
        self.ctx = ctx
        self.control = control
        self.progress = progress
        self.started = time.monotonic()
        self.flow_detail, self.engine = load_engine(build_delete_flow(ctx), backend, ctx.build_id)
        self.stopped = False
        self.failing: str | None = None  # the step whose failure ended the run
        self.left: list[str] = []  # what steps of this run left (for a FAILED delete)
        self.engine.atom_notifier.register("*", self.on_atom)

    def on_atom(self, state: str, details: dict[str, Any]) -> None:
        step = details.get("task_name")
        log_context.set_step(step)
        LOG.debug("delete %s step %s %s", self.ctx.build_id, step, state)
        if self.progress is not None:
            self.progress(self.ctx.build_id, step or "?", state, time.monotonic() - self.started)
        if state == tf_states.FAILURE and self.failing is None:
            self.failing = step
        result = details.get("result")
        if state == tf_states.SUCCESS and isinstance(result, dict):
            self.left += result.get("left") or []
        if state == tf_states.SUCCESS and not self.stopped and self.control.stopping():
            self.stopped = True
            self.engine.suspend()

    def begin(self, mode: str, reason: str | None) -> None:
        if mode == RESTART:
            # A retry, or a flow that changed: every step runs again (each is
            # idempotent), recorded as resets in the log.
            self.engine.compile()
            self.engine.prepare()
            self.engine.reset()
        if self.log.get_build(self.ctx.build_id).state != lifecycle.DELETING:
            payload = {"reason": reason} if reason else None
            self.log.transition_build(self.ctx.build_id, lifecycle.DELETING, payload=payload)

    def run(self) -> str:
        error: str | None = None
        try:
            self.engine.run()
        except AgentStopping:
            return self._interrupted(
                "agent stopped during the delete; it goes on at the next start"
            )
        except Exception as exc:
            if self.log.fenced or self.log.held(self.ctx.build_id) is not None:
                raise
            self.log.hold(self.ctx.build_id, exc)  # raises if the log failed under it
            error = describe(exc)
        flow_state = self.engine.storage.get_flow_state()
        if flow_state == tf_states.SUSPENDED:
            return self._interrupted(
                "agent stopped (SIGTERM); the delete goes on at the next start"
            )
        if flow_state == tf_states.SUCCESS:
            return self._deleted()
        return self._failed(error or f"delete flow ended {flow_state}")

    def _interrupted(self, reason: str) -> str:
        self.log.transition_build(
            self.ctx.build_id, lifecycle.INTERRUPTED, payload={"reason": reason}
        )
        return lifecycle.INTERRUPTED

    def _results(self) -> dict[str, Any]:
        found = {}
        for name in step_names():
            result = self.engine.storage.get(name) if self._done(name) else None
            if isinstance(result, dict):
                found[name] = result
        return found

    def _done(self, name: str) -> bool:
        return bool(self.engine.storage.get_atom_state(name) == tf_states.SUCCESS)

    def _deleted(self) -> str:
        results = self._results()
        left = [item for r in results.values() for item in r.get("left") or []]
        removed = [item for r in results.values() for item in r.get("removed") or []]
        for row in self.log.builds(instance_uuid=self.ctx.instance_uuid, kind=lifecycle.SPAWN):
            if row.build_id in self.ctx.owner_ids and lifecycle.DELETED in (
                lifecycle.TORN_DOWN.get(row.state, frozenset())
            ):
                self.log.transition_build(
                    row.build_id, lifecycle.DELETED, payload={"deleted_by": self.ctx.build_id}
                )
        self.log.transition_build(
            self.ctx.build_id,
            lifecycle.DELETED,
            payload={"left": left, "removed": removed},
        )
        if left:
            LOG.warning("delete %s: left (not the instance's own): %s", self.ctx.build_id, left)
        return lifecycle.DELETED

    def _failed(self, error: str) -> str:
        names = step_names()
        if self.failing in names:
            error = f"{self.failing}: {error}"
            not_reached = names[names.index(self.failing) + 1 :]
            if not_reached:
                error += f"; did not reach {', '.join(not_reached)}"
        self.log.transition_build(
            self.ctx.build_id, lifecycle.FAILED, error=error, payload={"left": self.left}
        )
        LOG.warning("delete %s FAILED: %s", self.ctx.build_id, error)
        return lifecycle.FAILED


def run_delete(
    ctx: DeleteContext,
    backend: EventLogBackend,
    *,
    mode: str = FRESH,
    reason: str | None = None,
    control: Control,
    progress: ProgressCallback | None = None,
) -> str:
    """Run, resume or restart the delete's flow; return its lifecycle state afterwards."""
    with backend.eventlog.running(ctx.build_id):
        run = _DeleteRun(ctx, backend, control, progress)
        run.begin(mode, reason)
        return run.run()
