"""The history model: what the log says about builds, as plain dataclasses.

Built by ``fold`` (one build) and the ``History`` reader (listings, stats);
read by ``diagnosis``, the CLI and library callers. No queries, no folding
here: only the shapes and the properties derived from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from taskflow import states as tf_states

from spawnflow.history.host_audit import AuditNote
from spawnflow.persistence import lifecycle

FORWARD = "forward"
REVERT = "revert"
INTERRUPTED = "INTERRUPTED"  # outcome of a span cut short by an agent crash


@dataclass
class Span:
    """One phase of one step: a forward attempt or a revert, with its outcome."""

    phase: str  # FORWARD | REVERT
    attempt: int  # 1-based, per phase
    start: float
    end: float | None = None  # None while it runs
    outcome: str | None = None  # SUCCESS FAILURE REVERTED REVERT_FAILURE INTERRUPTED

    @property
    def duration(self) -> float | None:
        return None if self.end is None else self.end - self.start


@dataclass
class StepHistory:
    """One step (TaskFlow atom) of a build: its current state and every span it ran."""

    name: str
    state: str = tf_states.PENDING
    started_at: float | None = None  # of the latest forward attempt
    ended_at: float | None = None
    revert_started_at: float | None = None  # of the latest revert
    revert_ended_at: float | None = None
    attempts: int = 0
    error: str | None = None  # "Type: message" of the forward failure
    revert_error: str | None = None  # "Type: message" of a failed revert
    result: Any = None  # the step's latest result (redacted)
    # The result of its latest successful forward run, kept through a revert
    # (TaskFlow clears ``results`` when a revert fails): what the step made.
    made: Any = None
    spans: list[Span] = field(default_factory=list)

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

    @property
    def reverted(self) -> bool:
        """True when a revert of this step finished successfully."""
        return any(s.phase == REVERT and s.outcome == tf_states.REVERTED for s in self.spans)

    @property
    def ran(self) -> bool:
        """True when a forward attempt of this step started."""
        return any(s.phase == FORWARD for s in self.spans)

    @property
    def open_span(self) -> Span | None:
        return self.spans[-1] if self.spans and self.spans[-1].end is None else None


@dataclass
class Transition:
    """One build lifecycle change (QUEUED -> RUNNING ...), with its detail (error, ...)."""

    at: float
    from_state: str | None
    to_state: str
    detail: dict[str, Any] | None


@dataclass
class Event:
    """One raw event of the log."""

    seq: int
    at: float
    kind: str
    name: str | None
    from_state: str | None
    to_state: str | None
    payload: Any
    subject: str | None = None


@dataclass
class ExternalEvent:
    """An external event handed in for the build (network-vif-plugged)."""

    seq: int
    at: float
    name: str
    tag: str
    status: str


@dataclass
class EventWait:
    """Events a step said the build must wait for (the ``vifs`` step's result)."""

    step: str
    name: str
    tags: list[str]
    since: float
    received: dict[str, ExternalEvent] = field(default_factory=dict)

    @property
    def outstanding(self) -> list[str]:
        return [tag for tag in self.tags if tag not in self.received]

    @property
    def failed(self) -> list[str]:
        return [
            tag
            for tag in self.tags
            if tag in self.received and self.received[tag].status == "failed"
        ]

    @property
    def completed_at(self) -> float | None:
        """When the last expected event arrived (None while any is outstanding)."""
        if self.outstanding or not self.tags:
            return None
        return max(self.received[tag].at for tag in self.tags)

    def deadline(self, timeout: float | None) -> float | None:
        return None if timeout is None else self.since + timeout


@dataclass
class Interruption:
    """The agent stopped under a running build; recovery found it on the next start."""

    at: float  # when recovery marked the build INTERRUPTED
    last_seen: float  # the last event before: the agent's last sign of life
    during: str | None  # lifecycle state it interrupted (RUNNING, REVERTING)
    steps: list[str]  # steps that were running or reverting
    after: str | None = None  # the last step that had finished before it
    resumed_at: float | None = None  # when recovery moved it on
    resumed_as: str | None = None  # RUNNING (resume) or REVERTING (rollback)
    reason: str | None = None  # why recovery chose that (from the log)


@dataclass
class AgentLease:
    """The agent that owns a host (``agents`` table): who, and its last heartbeat."""

    host: str
    agent_id: str
    pid: int
    started_at: float
    heartbeat_at: float


class BuildTiming:
    """``is_final``, ``finished_at`` and ``duration`` of a build (a final build's row
    changes no more, so its ``updated_at`` is when it finished)."""

    state: str
    created_at: float
    updated_at: float

    @property
    def is_final(self) -> bool:
        return lifecycle.is_final(self.state)

    @property
    def finished_at(self) -> float | None:
        return self.updated_at if self.is_final else None

    @property
    def duration(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.created_at


@dataclass
class BuildRecord(BuildTiming):
    """Everything the log says about one build (``BuildHistory`` adds ``diagnose``)."""

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
    external_events: list[ExternalEvent] = field(default_factory=list)
    waits: list[EventWait] = field(default_factory=list)
    interruptions: list[Interruption] = field(default_factory=list)
    spec: dict[str, Any] | None = None
    flow_version: str | None = None  # recorded when queued (None: before flow versions)
    kind: str = "spawn"  # or "delete" (persistence.lifecycle.KINDS)
    last_event_at: float | None = None
    agent: AgentLease | None = None  # the owner of the build's host, if the database has one
    audit: AuditNote | None = None  # an ACTIVE build: the host audit's last findings

    @property
    def failed_step(self) -> str | None:
        """The step whose forward run failed (what made the build roll back)."""
        return next((s.name for s in self.steps if s.error), None)

    @property
    def revert_failed_steps(self) -> list[str]:
        return [s.name for s in self.steps if s.revert_error]

    @property
    def reverted_steps(self) -> list[str]:
        return [s.name for s in self.steps if s.reverted]

    @property
    def current_steps(self) -> list[StepHistory]:
        """Steps running or reverting right now (as far as the log knows)."""
        if self.is_final:
            return []
        return [s for s in self.steps if s.open_span is not None]

    def step(self, name: str) -> StepHistory:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)


@dataclass(frozen=True)
class Diagnosis:
    """``kind`` is one of: active, queued, running, waiting, reverting, interrupted,
    rolled_back, cancelled, failed, resolved, deleting, deleted. ``text`` says it in one or two
    sentences."""

    kind: str
    text: str
    step: str | None = None


@dataclass(frozen=True)
class BuildSummary(BuildTiming):
    """One row of ``History.builds``."""

    build_id: str
    instance_uuid: str
    instance_name: str
    host: str
    state: str
    created_at: float
    updated_at: float
    error: str | None
    failed_step: str | None


@dataclass(frozen=True)
class StepStats:
    """Durations (seconds) of one step over the builds a ``stats`` call looked at."""

    name: str
    runs: int  # finished forward attempts
    failures: int
    p50: float | None
    p95: float | None
    max: float | None
    reverts: int
    revert_p50: float | None
    revert_p95: float | None


@dataclass(frozen=True)
class Stats:
    builds: dict[str, int]  # lifecycle state -> number of builds
    steps: list[StepStats]
    # host -> lifecycle state -> number of builds (a fleet on one log)
    hosts: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.builds.values())
