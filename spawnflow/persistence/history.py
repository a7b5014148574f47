"""The history read API: what happened to a build, step by step, from the event log.

    from spawnflow.history import History
    history = History.open("sqlite:////var/lib/spawnflow/spawnflow.sqlite")
    build = history.build(build_id)     # BuildHistory with .steps, .state, .error
    history.close()

Everything here is derived from events (never from TaskFlow's snapshots), so
it shows transitions the projections have overwritten: every attempt, every
revert, every lifecycle change with its time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from spawnflow.persistence import tables as t
from spawnflow.persistence.eventlog import ATOM, BUILD, EventLog

_DONE = {"SUCCESS", "FAILURE"}
_REVERT_DONE = {"REVERTED", "REVERT_FAILURE"}


@dataclass
class StepHistory:
    name: str
    state: str = "PENDING"
    started_at: float | None = None
    ended_at: float | None = None
    revert_started_at: float | None = None
    revert_ended_at: float | None = None
    attempts: int = 0
    error: str | None = None

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at

    @property
    def revert_duration(self) -> float | None:
        if self.revert_started_at is None or self.revert_ended_at is None:
            return None
        return self.revert_ended_at - self.revert_started_at


@dataclass
class Transition:
    at: float
    from_state: str | None
    to_state: str
    detail: dict[str, Any] | None


@dataclass
class Event:
    seq: int
    at: float
    kind: str
    name: str | None
    from_state: str | None
    to_state: str | None
    payload: Any


@dataclass
class BuildHistory:
    build_id: str
    instance_uuid: str
    instance_name: str
    host: str
    state: str
    error: str | None
    created_at: float
    updated_at: float
    steps: list[StepHistory] = field(default_factory=list)
    lifecycle: list[Transition] = field(default_factory=list)

    @property
    def failed_step(self) -> str | None:
        return next((s.name for s in self.steps if s.error), None)


def _failure_text(failure: dict[str, Any] | None) -> str | None:
    if not failure:
        return None
    names = failure.get("exc_type_names") or ["Error"]
    return f"{names[0].rsplit('.', 1)[-1]}: {failure.get('exception_str', '')}"


def _apply_atom_event(step: StepHistory, event: Any) -> None:
    to_state = event.to_state
    changes = (event.payload or {}).get("set", {})
    if to_state != step.state or "failure" in changes or "revert_failure" in changes:
        if to_state == "RUNNING" and step.state != "RUNNING":
            step.started_at, step.ended_at = event.ts, None
            step.attempts += 1
        elif to_state in _DONE and step.ended_at is None:
            step.ended_at = event.ts
        elif to_state == "REVERTING" and step.state != "REVERTING":
            step.revert_started_at, step.revert_ended_at = event.ts, None
        elif to_state in _REVERT_DONE:
            step.revert_ended_at = event.ts
    failure = changes.get("revert_failure") or changes.get("failure")
    if failure:
        step.error = _failure_text(failure)
    step.state = to_state or step.state


class History:
    def __init__(self, eventlog: EventLog, owns: bool = False):
        self._log = eventlog
        self._owns = owns

    @classmethod
    def open(cls, db_url: str) -> History:
        """Open a history database read-only in spirit: it is never created or upgraded."""
        return cls(EventLog.open(db_url, upgrade=False), owns=True)

    def close(self) -> None:
        if self._owns:
            self._log.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def events(self, build_id: str) -> list[Event]:
        self._log.get_build(build_id)  # raises UnknownBuild
        return [Event(e.seq, e.ts, e.kind, e.name, e.from_state, e.to_state, e.payload)
                for e in self._log.events(build_id)]

    def build(self, build_id: str) -> BuildHistory:
        row = self._log.get_build(build_id)
        result = BuildHistory(build_id=row.build_id, instance_uuid=row.instance_uuid,
                              instance_name=row.instance_name, host=row.host, state=row.state,
                              error=row.error, created_at=row.created_at,
                              updated_at=row.updated_at)
        steps: dict[str, StepHistory] = {}
        for event in self._log.events(build_id):
            if event.kind == BUILD:
                detail = {k: v for k, v in (event.payload or {}).items() if k != "spec"}
                result.lifecycle.append(Transition(event.ts, event.from_state, event.to_state,
                                                   detail or None))
            elif event.kind == ATOM and event.name:
                step = steps.setdefault(event.name, StepHistory(event.name))
                _apply_atom_event(step, event)
        result.steps = list(steps.values())
        return result

    def builds(self, limit: int = 50) -> list[Any]:
        query = sa.select(t.builds).order_by(t.builds.c.created_at.desc()).limit(limit)
        with self._log.engine.connect() as conn:
            return list(conn.execute(query))
