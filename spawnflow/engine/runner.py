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

import taskflow.engines
from taskflow import states as tf_states
from taskflow.types import failure as tf_failure

from spawnflow.exceptions import AgentStopping
from spawnflow.flows.context import BuildContext
from spawnflow.flows.spawn import build_spawn_flow
from spawnflow.persistence import lifecycle
from spawnflow.persistence.backend import EventLogBackend

LOG = logging.getLogger(__name__)

ProgressCallback = Callable[[str, str, str, float], None]  # build_id, step, state, elapsed
FRESH, RESUME, ROLLBACK = "fresh", "resume", "rollback"

_FINAL_BY_FLOW_STATE = {
    tf_states.SUCCESS: lifecycle.ACTIVE,
    tf_states.REVERTED: lifecycle.ROLLED_BACK,
    tf_states.FAILURE: lifecycle.FAILED,
}


def describe(exc: BaseException) -> str:
    if isinstance(exc, tf_failure.Failure):
        return f"{exc.exception_type_names[0].rsplit('.', 1)[-1]}: {exc.exception_str}"
    causes = getattr(exc, "failures", None)  # taskflow WrappedFailure
    if causes:
        return "; ".join(describe(f) for f in causes)
    return f"{type(exc).__name__}: {exc}"


class Control:
    """What the agent asks of a running build: cancel it, or stop at a boundary."""

    def __init__(self, cancelled: Callable[[], bool], stopping: Callable[[], bool]):
        self.cancelled = cancelled
        self.stopping = stopping


def _to(log, build_id: str, state: str, **kwargs) -> None:
    if log.get_build(build_id).state != state:
        log.transition_build(build_id, state, **kwargs)


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
    log = backend.eventlog
    build_id = ctx.build_id
    started = time.monotonic()
    book = backend.get_connection().get_logbook(build_id)
    flow_detail = next(iter(book))
    engine = taskflow.engines.load(
        build_spawn_flow(ctx), flow_detail=flow_detail, book=book, backend=backend, engine="serial"
    )
    suspended_for: list[str] = []

    def on_atom(state: str, details: dict) -> None:
        step = details.get("task_name", "?")
        LOG.debug("build %s step %s %s", build_id, step, state)
        if state == tf_states.REVERTING:
            # TaskFlow's flow has no REVERTING state of its own: the first atom
            # to revert is the moment; it is committed before its revert runs.
            _to(log, build_id, lifecycle.REVERTING)
        if progress is not None:
            progress(build_id, step, state, time.monotonic() - started)
        if (
            control is not None
            and state in (tf_states.SUCCESS, tf_states.REVERTED)
            and not suspended_for
        ):
            if control.cancelled():
                suspended_for.append("cancel")
                engine.suspend()
            elif control.stopping():
                suspended_for.append("stop")
                engine.suspend()

    def revert_everything(why: str) -> None:
        for ad in flow_detail:
            engine.storage.set_atom_intention(ad.name, tf_states.REVERT)
        _to(log, build_id, lifecycle.REVERTING, payload={"reason": why})

    engine.atom_notifier.register("*", on_atom)  # '*' == Notifier.ANY
    payload = {"reason": reason} if reason else None
    if mode == ROLLBACK:
        engine.compile()
        engine.prepare()
        revert_everything(reason or "rollback")
    else:
        log.transition_build(build_id, lifecycle.RUNNING, payload=payload)
    error: str | None = None
    while True:
        try:
            engine.run()
        except AgentStopping:
            running = [
                ad.name
                for ad in flow_detail
                if engine.storage.get_atom_state(ad.name) == tf_states.RUNNING
            ]
            log.transition_build(
                build_id,
                lifecycle.INTERRUPTED,
                payload={
                    "reason": f"agent stopped during step {', '.join(running) or '?'}; "
                    "it re-runs on the next start"
                },
            )
            return lifecycle.INTERRUPTED
        except Exception as exc:
            error = describe(exc)
        flow_state = engine.storage.get_flow_state()
        if flow_state != tf_states.SUSPENDED:
            break
        why = suspended_for.pop()
        if why == "stop":
            log.transition_build(
                build_id, lifecycle.INTERRUPTED, payload={"reason": "agent stopped (SIGTERM)"}
            )
            return lifecycle.INTERRUPTED
        error = "BuildCancelled: cancelled by operator"
        revert_everything("cancelled by operator")
    final = _FINAL_BY_FLOW_STATE.get(flow_state, lifecycle.FAILED)
    if final != lifecycle.ACTIVE:
        _to(log, build_id, lifecycle.REVERTING)
    if error is None and final != lifecycle.ACTIVE:
        error = reason
    log.transition_build(build_id, final, error=error if final != lifecycle.ACTIVE else None)
    if final != lifecycle.ACTIVE:
        LOG.warning("build %s %s: %s", build_id, final, error)
    return final
