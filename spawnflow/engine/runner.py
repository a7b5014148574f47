"""Runs one build: its spawn flow on a TaskFlow engine loaded from the event log.

The lifecycle transitions of the build are written here, each before the work
it announces: RUNNING before the first step (or a resumed step), REVERTING
when TaskFlow starts reverting (or a rollback is chosen), then ACTIVE,
ROLLED_BACK or FAILED. A cancel or an agent stop suspends the engine at the
next step boundary: a cancelled build is then rolled back, a stopped one is
left INTERRUPTED for the next agent start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import taskflow.engines
from taskflow import states as tf_states
from taskflow.types import failure as tf_failure

from spawnflow.engine import log_context
from spawnflow.exceptions import AgentStopping
from spawnflow.flows.context import BuildContext
from spawnflow.flows.spawn import build_spawn_flow
from spawnflow.persistence import lifecycle
from spawnflow.persistence.backend import EventLogBackend
from spawnflow.persistence.eventlog import EventLog

LOG = logging.getLogger(__name__)

ProgressCallback = Callable[[str, str, str, float], None]  # build_id, step, state, elapsed
FRESH, RESUME, ROLLBACK = "fresh", "resume", "rollback"

_FINAL_BY_FLOW_STATE = {
    tf_states.SUCCESS: lifecycle.ACTIVE,
    tf_states.REVERTED: lifecycle.ROLLED_BACK,
    tf_states.FAILURE: lifecycle.FAILED,
}


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception (of each cause, for TaskFlow's wrapped failures)."""
    if isinstance(exc, tf_failure.Failure):
        return f"{exc.exception_type_names[0].rsplit('.', 1)[-1]}: {exc.exception_str}"
    causes = getattr(exc, "failures", None)  # taskflow WrappedFailure
    if causes:
        return "; ".join(describe(f) for f in causes)
    return f"{type(exc).__name__}: {exc}"


def load_engine(flow: Any, backend: EventLogBackend, build_id: str) -> tuple[Any, Any]:
    """``flow`` on a serial TaskFlow engine loaded from the build's logbook in the log:
    (its flow detail, the engine). Spawn and delete runs both start here."""
    book = backend.get_connection().get_logbook(build_id)
    flow_detail = next(iter(book))
    engine = taskflow.engines.load(
        flow, flow_detail=flow_detail, book=book, backend=backend, engine="serial"
    )
    return flow_detail, engine


class Control:
    """What the agent asks of a running build: cancel it, or stop at a boundary."""

    def __init__(self, cancelled: Callable[[], bool], stopping: Callable[[], bool]) -> None:
        self.cancelled = cancelled
        self.stopping = stopping


def _to(log: EventLog, build_id: str, state: str, **kwargs: Any) -> None:
    if log.get_build(build_id).state != state:
        log.transition_build(build_id, state, **kwargs)


class _BuildRun:
    """One run of a build's flow on its TaskFlow engine: notifications, suspends, outcome."""

    def __init__(
        self,
        ctx: BuildContext,
        backend: EventLogBackend,
        control: Control | None,
        progress: ProgressCallback | None,
    ) -> None:
        self.log = backend.eventlog
        self.build_id = ctx.build_id
        self.control = control
        self.progress = progress
        self.started = time.monotonic()
        self.flow_detail, self.engine = load_engine(build_spawn_flow(ctx), backend, self.build_id)
        self.suspended_for: list[str] = []
        self.engine.atom_notifier.register("*", self.on_atom)  # '*' == Notifier.ANY

    def on_atom(self, state: str, details: dict[str, Any]) -> None:
        step = details.get("task_name", "?")
        log_context.set_step(step)
        LOG.debug("build %s step %s %s", self.build_id, step, state)
        if state == tf_states.REVERTING:
            # TaskFlow's flow has no REVERTING state of its own: the first atom
            # to revert is the moment; it is committed before its revert runs.
            _to(self.log, self.build_id, lifecycle.REVERTING)
        if self.progress is not None:
            self.progress(self.build_id, step, state, time.monotonic() - self.started)
        control = self.control
        if (
            control is not None
            and state in (tf_states.SUCCESS, tf_states.REVERTED)
            and not self.suspended_for
        ):
            if control.cancelled():
                self.suspended_for.append("cancel")
                self.engine.suspend()
            elif control.stopping():
                self.suspended_for.append("stop")
                self.engine.suspend()

    def revert_everything(self, why: str) -> None:
        for ad in self.flow_detail:
            self.engine.storage.set_atom_intention(ad.name, tf_states.REVERT)
        _to(self.log, self.build_id, lifecycle.REVERTING, payload={"reason": why})

    def begin(self, mode: str, reason: str | None) -> None:
        """RUNNING (fresh or resumed) or, for a rollback, every step set to revert."""
        if mode == ROLLBACK:
            self.engine.compile()
            self.engine.prepare()
            self.revert_everything(reason or "rollback")
        else:
            payload = {"reason": reason} if reason else None
            self.log.transition_build(self.build_id, lifecycle.RUNNING, payload=payload)

    def interrupted(self, reason: str) -> str:
        self.log.transition_build(self.build_id, lifecycle.INTERRUPTED, payload={"reason": reason})
        return lifecycle.INTERRUPTED

    def run(self) -> tuple[str | None, str | None]:
        """Run until the flow settles: ``(flow state, error)``, or ``(None, None)`` when
        the agent stopped (the build is then INTERRUPTED)."""
        error: str | None = None
        while True:
            try:
                self.engine.run()
            except AgentStopping:
                running = [
                    ad.name
                    for ad in self.flow_detail
                    if self.engine.storage.get_atom_state(ad.name) == tf_states.RUNNING
                ]
                self.interrupted(
                    f"agent stopped during step {', '.join(running) or '?'}; "
                    "it re-runs on the next start"
                )
                return None, None
            except Exception as exc:
                if self.log.fenced or self.log.held(self.build_id) is not None:
                    # The log failed under the run: nothing more may be
                    # written for it here; the agent waits for the log.
                    raise
                self.log.hold(self.build_id, exc)  # raises if the log failed under it
                error = describe(exc)
            flow_state: str = self.engine.storage.get_flow_state()
            if flow_state != tf_states.SUSPENDED:
                return flow_state, error
            if self.suspended_for.pop() == "stop":
                self.interrupted("agent stopped (SIGTERM)")
                return None, None
            error = "BuildCancelled: cancelled by operator"
            self.revert_everything("cancelled by operator")

    def finish(self, flow_state: str, error: str | None, reason: str | None) -> str:
        """Write the final lifecycle state the flow's state maps to; return it."""
        final = _FINAL_BY_FLOW_STATE.get(flow_state, lifecycle.FAILED)
        if final == lifecycle.ACTIVE:
            self.log.transition_build(self.build_id, final, error=None)
            return final
        _to(self.log, self.build_id, lifecycle.REVERTING)
        if error is None:
            error = reason
        self.log.transition_build(self.build_id, final, error=error)
        LOG.warning("build %s %s: %s", self.build_id, final, error)
        return final


def run_build(
    ctx: BuildContext,
    backend: EventLogBackend,
    *,
    mode: str = FRESH,
    reason: str | None = None,
    control: Control | None = None,
    progress: ProgressCallback | None = None,
) -> str:
    """Run, resume or roll back the build's flow; return its lifecycle state afterwards."""
    with backend.eventlog.running(ctx.build_id):
        run = _BuildRun(ctx, backend, control, progress)
        run.begin(mode, reason)
        flow_state, error = run.run()
        if flow_state is None:
            return lifecycle.INTERRUPTED
        return run.finish(flow_state, error, reason)
