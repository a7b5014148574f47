"""Runs one build: its spawn flow on a TaskFlow engine loaded from the event log.

The lifecycle transitions of the build are written here, each before the work
it announces: RUNNING before the first step, REVERTING when TaskFlow starts
reverting, then ACTIVE, ROLLED_BACK or FAILED.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import taskflow.engines
from taskflow import states as tf_states
from taskflow.types import failure as tf_failure

from spawnflow.flows.context import BuildContext
from spawnflow.flows.spawn import build_spawn_flow
from spawnflow.persistence import lifecycle
from spawnflow.persistence.backend import EventLogBackend

LOG = logging.getLogger(__name__)

ProgressCallback = Callable[[str, str, str, float], None]  # build_id, step, state, elapsed


def describe(exc: BaseException) -> str:
    if isinstance(exc, tf_failure.Failure):
        return f"{exc.exception_type_names[0]}: {exc.exception_str}"
    causes = getattr(exc, "failures", None)  # taskflow WrappedFailure
    if causes:
        return "; ".join(describe(f) for f in causes)
    return f"{type(exc).__name__}: {exc}"


def run_build(ctx: BuildContext, backend: EventLogBackend,
              progress: ProgressCallback | None = None) -> str:
    """Run (or continue) the build's flow; return its final lifecycle state."""
    log = backend.eventlog
    build_id = ctx.build_id
    started = time.monotonic()
    conn = backend.get_connection()
    book = conn.get_logbook(build_id)
    flow_detail = next(iter(book))
    engine = taskflow.engines.load(build_spawn_flow(ctx), flow_detail=flow_detail, book=book,
                                   backend=backend, engine="serial")

    def on_flow_reverting(state: str, details: dict) -> None:
        log.transition_build(build_id, lifecycle.REVERTING)

    def on_atom(state: str, details: dict) -> None:
        LOG.debug("build %s step %s %s", build_id, details.get("task_name"), state)
        if progress is not None:
            progress(build_id, details.get("task_name", "?"), state,
                     time.monotonic() - started)

    engine.notifier.register(tf_states.REVERTING, on_flow_reverting)
    engine.atom_notifier.register("*", on_atom)  # '*' == Notifier.ANY
    log.transition_build(build_id, lifecycle.RUNNING)
    try:
        engine.run()
    except Exception as exc:  # noqa: BLE001 - any step error ends in a lifecycle state
        error = describe(exc)
        final = (lifecycle.ROLLED_BACK if engine.storage.get_flow_state() == tf_states.REVERTED
                 else lifecycle.FAILED)
        if log.get_build(build_id).state == lifecycle.RUNNING:
            log.transition_build(build_id, lifecycle.REVERTING)
        log.transition_build(build_id, final, error=error)
        LOG.warning("build %s %s: %s", build_id, final, error)
        return final
    log.transition_build(build_id, lifecycle.ACTIVE)
    return lifecycle.ACTIVE
