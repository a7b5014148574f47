"""Folding a build's events into its history: steps, spans, lifecycle, waits.

Everything about a build is derived from its events (never from TaskFlow's
snapshots), so the fold shows what the projections have overwritten: every
attempt, every revert, every lifecycle change, every external event, with its
time. Which atom states open and close a run or a revert span is said once
here (``span_edge``); ``stats`` pairs its durations with the same rule.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from taskflow import states as tf_states

from spawnflow.history.build import BuildHistory
from spawnflow.history.model import (
    FORWARD,
    INTERRUPTED,
    REVERT,
    EventWait,
    ExternalEvent,
    Interruption,
    Span,
    StepHistory,
    Transition,
)
from spawnflow.persistence import lifecycle
from spawnflow.persistence.eventlog import ATOM, BUILD, EXTERNAL
from spawnflow.persistence.step_results import VIF_PLUGGED, VifsResult

# Atom state -> (phase, True when it opens a span of that phase, False when it closes one).
_EDGES: dict[str, tuple[str, bool]] = {
    tf_states.RUNNING: (FORWARD, True),
    tf_states.SUCCESS: (FORWARD, False),
    tf_states.FAILURE: (FORWARD, False),
    tf_states.REVERTING: (REVERT, True),
    tf_states.REVERTED: (REVERT, False),
    tf_states.REVERT_FAILURE: (REVERT, False),
}
#: The atom states that open or close a span (what ``stats`` reads from the log).
SPAN_STATES = frozenset(_EDGES)


def span_edge(state: str | None) -> tuple[str, bool] | None:
    """``(phase, opens)`` when an atom entering ``state`` starts or ends a span, else None."""
    return None if state is None else _EDGES.get(state)


def failure_text(failure: object) -> str | None:
    """``Type: message`` from a TaskFlow failure dict as stored in the log.

    A failure that is not such a dict (an older or damaged row) is shown as it is.
    """
    if not failure:
        return None
    if not isinstance(failure, dict):
        return str(failure)
    names = failure.get("exc_type_names")
    name = names[0] if isinstance(names, list) and names else "Error"
    return f"{str(name).rsplit('.', 1)[-1]}: {failure.get('exception_str', '')}"


def _object(value: Any) -> dict[str, Any]:
    """A payload (or its ``set``) as a dict: an older or damaged row may hold anything."""
    return value if isinstance(value, dict) else {}


class _Folder:
    """Applies a build's events in order; one instance per build."""

    def __init__(self, result: BuildHistory) -> None:
        self.result = result
        self.steps: dict[str, StepHistory] = {}
        self.last_ts: float | None = None
        self.resumed_at: float | None = None  # set after INTERRUPTED -> RUNNING|REVERTING

    def apply(self, event: Any) -> None:
        if event.kind == BUILD:
            self._build(event)
        elif event.kind == ATOM and event.name:
            step = self.steps.setdefault(event.name, StepHistory(event.name))
            self._atom(step, event)
        elif event.kind == EXTERNAL:
            self.result.external_events.append(
                ExternalEvent(
                    seq=event.seq,
                    at=event.ts,
                    name=event.name or VIF_PLUGGED,
                    tag=event.subject or "",
                    status=event.to_state or "",
                )
            )
        self.last_ts = event.ts

    def _build(self, event: Any) -> None:
        payload = _object(event.payload)
        if (
            event.from_state is None
            and self.result.spec is None
            and isinstance(payload.get("spec"), dict)
        ):
            self.result.spec = payload["spec"]
        detail = {k: v for k, v in payload.items() if k != "spec"}
        self.result.lifecycle.append(
            Transition(event.ts, event.from_state, event.to_state, detail or None)
        )
        if event.to_state == lifecycle.INTERRUPTED:
            last_seen = self.last_ts if self.last_ts is not None else event.ts
            cut = []
            for step in self.steps.values():
                span = step.open_span
                if span is not None:
                    span.end, span.outcome = max(last_seen, span.start), INTERRUPTED
                    cut.append(step.name)
            finished = [
                (span.end, step.name)
                for step in self.steps.values()
                for span in step.spans
                if span.end is not None and span.outcome != INTERRUPTED
            ]
            self.result.interruptions.append(
                Interruption(
                    at=event.ts,
                    last_seen=last_seen,
                    during=event.from_state,
                    steps=cut,
                    after=max(finished)[1] if finished else None,
                )
            )
        elif event.from_state == lifecycle.INTERRUPTED and self.result.interruptions:
            gap = self.result.interruptions[-1]
            gap.resumed_at, gap.resumed_as = event.ts, event.to_state
            gap.reason = payload.get("reason")
            self.resumed_at = event.ts

    def _open(self, step: StepHistory, phase: str, start: float) -> Span:
        attempt = 1 + sum(1 for s in step.spans if s.phase == phase)
        span = Span(phase, attempt, start)
        step.spans.append(span)
        if phase == FORWARD:
            step.attempts = attempt
            step.started_at, step.ended_at = start, None
        else:
            step.revert_started_at, step.revert_ended_at = start, None
        return span

    def _close(self, step: StepHistory, phase: str, event: Any) -> None:
        span = step.open_span
        if span is None or span.phase != phase:
            # No start in the log (a crash cut it; the resumed engine went straight
            # to the outcome): it ran at the latest from the resume on.
            if span is not None:
                span.end, span.outcome = event.ts, INTERRUPTED
            span = self._open(step, phase, min(self.resumed_at or event.ts, event.ts))
        span.end, span.outcome = event.ts, event.to_state
        if phase == FORWARD:
            step.ended_at = event.ts
        else:
            step.revert_ended_at = event.ts

    def _atom(self, step: StepHistory, event: Any) -> None:
        new = event.to_state or step.state
        changes = _object(_object(event.payload).get("set"))
        moved = event.from_state != new  # progress/meta/intention events keep the state
        edge = span_edge(new)
        if edge is not None:
            phase, opens = edge
            span = step.open_span
            if opens and (span is None or span.phase != phase):
                if span is not None:
                    span.end, span.outcome = event.ts, INTERRUPTED
                self._open(step, phase, event.ts)
            elif not opens and moved:
                self._close(step, phase, event)
        if "results" in changes:
            step.result = changes["results"]
            if new == tf_states.SUCCESS and changes["results"] is not None:
                step.made = changes["results"]
        if changes.get("failure"):
            step.error = failure_text(changes["failure"])
        if changes.get("revert_failure"):
            step.revert_error = failure_text(changes["revert_failure"])
        step.state = new

    def finish(self) -> BuildHistory:
        result = self.result
        result.steps = list(self.steps.values())
        result.last_event_at = self.last_ts
        for step in result.steps:
            wait = _wait_of(step)
            if wait is not None:
                result.waits.append(wait)
        for wait in result.waits:
            for event in result.external_events:
                if event.tag in wait.tags:
                    wait.received[event.tag] = event  # the latest status wins
                    wait.name = event.name
        return result


def _wait_of(step: StepHistory) -> EventWait | None:
    """The wait a step's result announces (the ``vifs`` step's ``VifsResult``), if any.

    Any step whose result has the keys counts; a stored result is data from
    the log (an older or damaged row may hold anything), so types are checked.
    """
    if not isinstance(step.result, dict):
        return None
    result = cast(VifsResult, step.result)
    tags, since = result.get("expected_events"), result.get("waiting_since")
    if not tags or not isinstance(tags, list) or not isinstance(since, (int, float)):
        return None
    return EventWait(
        step=step.name, name=VIF_PLUGGED, tags=[str(t) for t in tags], since=float(since)
    )


def fold(row: Any, events: Iterable[Any]) -> BuildHistory:
    """A BuildHistory from a ``builds`` row and the build's events in seq order."""
    folder = _Folder(
        BuildHistory(
            build_id=row.build_id,
            instance_uuid=row.instance_uuid,
            instance_name=row.instance_name,
            host=row.host,
            state=row.state,
            error=row.error,
            created_at=row.created_at,
            updated_at=row.updated_at,
            flow_version=getattr(row, "flow_version", None),
            kind=getattr(row, "kind", None) or "spawn",
        )
    )
    for event in events:
        folder.apply(event)
    return folder.finish()
