"""The history read API: what happened to a build, step by step, from the event log.

    from spawnflow.history import History
    with History.open("sqlite:////var/lib/spawnflow/spawnflow.sqlite") as history:
        for summary in history.builds(state="ROLLED_BACK", since="7d", limit=20):
            print(summary.build_id, summary.failed_step, summary.error)
        build = history.build(build_id)     # BuildHistory: .steps, .lifecycle, .diagnose()

Everything about a build is derived from its events (never from TaskFlow's
snapshots), so it shows what the projections have overwritten: every attempt,
every revert, every lifecycle change, every external event, with its time.
Listings read the ``builds`` projection (one row per build) and touch the
events of the listed page only.

Reads never take the SQLite write lock: ``History.open`` checks the schema
(refusing a missing, foreign or newer database) and then reads through its own
engine, so an operator's query never stalls a running agent.
"""

from __future__ import annotations

import datetime
import math
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from spawnflow.exceptions import PersistenceError, SchemaError, UnknownBuild
from spawnflow.persistence import lifecycle, schema
from spawnflow.persistence import tables as t
from spawnflow.persistence.eventlog import ATOM, BUILD, EXTERNAL, EventLog
from spawnflow.persistence.redact import mask_url

FORWARD = "forward"
REVERT = "revert"
INTERRUPTED = "INTERRUPTED"  # outcome of a span cut short by an agent crash

# TaskFlow atom states as they appear in the log.
_RUNNING, _SUCCESS, _FAILURE = "RUNNING", "SUCCESS", "FAILURE"
_REVERTING, _REVERTED, _REVERT_FAILURE = "REVERTING", "REVERTED", "REVERT_FAILURE"
_FORWARD_DONE = frozenset({_SUCCESS, _FAILURE})
_REVERT_DONE = frozenset({_REVERTED, _REVERT_FAILURE})

DEFAULT_EVENT_NAME = "network-vif-plugged"


# -- the model -------------------------------------------------------------------------


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
    state: str = "PENDING"
    started_at: float | None = None  # of the latest forward attempt
    ended_at: float | None = None
    revert_started_at: float | None = None  # of the latest revert
    revert_ended_at: float | None = None
    attempts: int = 0
    error: str | None = None  # "Type: message" of the forward failure
    revert_error: str | None = None  # "Type: message" of a failed revert
    result: Any = None  # the step's latest result (redacted)
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
        return any(s.phase == REVERT and s.outcome == _REVERTED for s in self.spans)

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


class _BuildTiming:
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
class BuildHistory(_BuildTiming):
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
    last_event_at: float | None = None
    agent: AgentLease | None = None  # the owner of the build's host, if the database has one

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

    def diagnose(
        self,
        *,
        vif_plugging_timeout: float | None = None,
        recovery_policy: str | None = None,
        resume_window: float | None = None,
        lease_seconds: float | None = None,
        now: float | None = None,
    ) -> Diagnosis:
        """In words: what this build waits for, or why it failed; see ``diagnosis``."""
        from spawnflow.persistence.diagnosis import diagnose

        return diagnose(
            self,
            vif_plugging_timeout=vif_plugging_timeout,
            recovery_policy=recovery_policy,
            resume_window=resume_window,
            lease_seconds=lease_seconds,
            now=now,
        )


@dataclass(frozen=True)
class Diagnosis:
    """``kind`` is one of: active, queued, running, waiting, reverting, interrupted,
    rolled_back, cancelled, failed. ``text`` says it in one or two sentences."""

    kind: str
    text: str
    step: str | None = None


@dataclass(frozen=True)
class BuildSummary(_BuildTiming):
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

    @property
    def total(self) -> int:
        return sum(self.builds.values())


# -- folding events into a BuildHistory -------------------------------------------------


def failure_text(failure: dict[str, Any] | None) -> str | None:
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

    def __init__(self, result: BuildHistory):
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
                    name=event.name or DEFAULT_EVENT_NAME,
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
        span = step.open_span
        if new == _RUNNING and (span is None or span.phase != FORWARD):
            if span is not None:
                span.end, span.outcome = event.ts, INTERRUPTED
            self._open(step, FORWARD, event.ts)
        elif new in _FORWARD_DONE and moved:
            self._close(step, FORWARD, event)
        elif new == _REVERTING and (span is None or span.phase != REVERT):
            if span is not None:
                span.end, span.outcome = event.ts, INTERRUPTED
            self._open(step, REVERT, event.ts)
        elif new in _REVERT_DONE and moved:
            self._close(step, REVERT, event)
        if "results" in changes:
            step.result = changes["results"]
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
    result = step.result
    if not isinstance(result, dict):
        return None
    tags, since = result.get("expected_events"), result.get("waiting_since")
    if not tags or not isinstance(tags, list) or not isinstance(since, (int, float)):
        return None
    return EventWait(
        step=step.name, name=DEFAULT_EVENT_NAME, tags=[str(t) for t in tags], since=float(since)
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
        )
    )
    for event in events:
        folder.apply(event)
    return folder.finish()


# -- times ------------------------------------------------------------------------------

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(
    value: float | int | str | datetime.datetime | None, now: float | None = None
) -> float | None:
    """A POSIX timestamp from a timestamp, a datetime (naive = UTC), an ISO 8601 string
    (``2024-05-01``, ``2024-05-01T12:00``, ``2024-05-01 12:00:00+02:00``, ``...Z``)
    or an age (``90m``, ``2h``, ``7d``: that long before now)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"not a time: {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, datetime.datetime):
        moment = value
    else:
        text = str(value).strip()
        age = _AGE.match(text)
        if age:
            return (time.time() if now is None else now) - float(age[1]) * _UNIT[age[2]]
        try:
            moment = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"cannot read time {text!r}: give ISO 8601 (2024-05-01, 2024-05-01T12:00, "
                "2024-05-01T12:00:00Z) or an age (90m, 2h, 7d)"
            ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _states(value: str | Iterable[str] | None) -> list[str] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    wanted = sorted(
        {part.strip().upper() for item in items for part in item.split(",") if part.strip()}
    )
    unknown = [s for s in wanted if s not in lifecycle.STATES]
    if unknown:
        raise ValueError(
            f"unknown build state(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(lifecycle.STATES))}"
        )
    return wanted or None


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False


def percentile(ordered: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) of sorted values, linear between closest ranks."""
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# -- opening a database for reading -----------------------------------------------------


def shown_url(url: str) -> str:
    """``url`` as messages show it: password, query and fragment masked."""
    return mask_url(url)


def read_engine(url: str) -> sa.Engine:
    """An engine for reads on a checked spawnflow database; never creates or upgrades.

    Refuses (SchemaError) a missing or empty database, a foreign one, one newer
    than this code. On SQLite it reads in deferred transactions (snapshots in
    WAL mode) with ``query_only`` set, so it never takes or waits for the
    write lock a running agent uses.
    """
    try:
        revision = schema.inspect_url(url)
    except SchemaError:
        raise
    except sa.exc.ArgumentError as exc:
        raise PersistenceError(f"not a database URL: {shown_url(url)} ({exc})") from None
    except sa.exc.SQLAlchemyError as exc:
        raise PersistenceError(f"cannot read {shown_url(url)}: {_first_line(exc)}") from None
    if revision is None:
        raise SchemaError(
            f"{shown_url(url)} holds no spawnflow history (missing or empty "
            "database; check --db or [database] connection)"
        )
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True)
    engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record):
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA query_only=ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN")  # deferred: a read snapshot, no write lock

    return engine


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return text[0] if text else type(orig).__name__


# -- the API ----------------------------------------------------------------------------


class History:
    """Read access to the history of builds in one event log database."""

    def __init__(self, eventlog: EventLog, owns: bool = False):
        self._log = eventlog
        self._owns = owns

    @classmethod
    def open(cls, db_url: str) -> History:
        """Open a history database for reading: it is never created or upgraded.

        Raises SchemaError for a missing/empty, foreign or newer database and
        PersistenceError when the database cannot be reached.
        """
        return cls(EventLog(read_engine(db_url)), owns=True)

    @property
    def engine(self) -> sa.Engine:
        return self._log.engine

    def close(self) -> None:
        if self._owns:
            self._log.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _connect(self) -> Any:
        try:
            return self.engine.connect()
        except sa.exc.OperationalError as exc:
            raise PersistenceError(
                f"cannot read {shown_url(str(self.engine.url))}: {_first_line(exc)}"
            ) from None

    # -- one build ------------------------------------------------------------------

    def resolve(self, build_id: str, conn: sa.Connection | None = None) -> str:
        """The full id of the build ``build_id`` names (a full id or a unique prefix)."""
        prefix = (build_id or "").strip()
        if not prefix:
            raise UnknownBuild("empty build id")
        if conn is None:
            with self._connect() as own:
                return self.resolve(prefix, own)
        b = t.builds.c
        found = conn.execute(sa.select(b.build_id).where(b.build_id == prefix)).first()
        if found is not None:
            return found.build_id
        if len(prefix) >= 36:
            raise UnknownBuild(f"no build {build_id} in this database")
        # A range (not LIKE) so that every backend uses the primary key index.
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        rows = conn.execute(
            sa.select(b.build_id)
            .where(b.build_id >= prefix, b.build_id < upper)
            .order_by(b.build_id)
            .limit(6)
        ).all()
        rows = [r for r in rows if r.build_id.startswith(prefix)]  # collations may differ
        if not rows:
            raise UnknownBuild(f"no build {build_id} in this database")
        if len(rows) > 1:
            shown = ", ".join(r.build_id[:13] for r in rows[:5])
            raise UnknownBuild(
                f"build id prefix {build_id!r} is ambiguous ({shown}"
                f"{', ...' if len(rows) > 5 else ''}); give more characters"
            )
        return rows[0].build_id

    def _row_and_events(self, build_id: str) -> tuple[Any, list[Any]]:
        with self._connect() as conn:
            full = self.resolve(build_id, conn)
            row = conn.execute(sa.select(t.builds).where(t.builds.c.build_id == full)).first()
            events = list(
                conn.execute(
                    sa.select(t.events).where(t.events.c.build_id == full).order_by(t.events.c.seq)
                )
            )
        return row, events

    def build(self, build_id: str) -> BuildHistory:
        """Steps, lifecycle, external events and waits of one build (id or unique prefix)."""
        row, events = self._row_and_events(build_id)
        result = fold(row, events)
        if not result.is_final:
            result.agent = self.agent(result.host)
        return result

    def agent(self, host: str) -> AgentLease | None:
        """The lease of the agent owning ``host`` (None: no agent has run, or no such table)."""
        agents = getattr(t, "agents", None)
        if agents is None:
            return None
        try:
            with self._connect() as conn:
                row = conn.execute(sa.select(agents).where(agents.c.host == host)).first()
        except sa.exc.OperationalError:
            return None  # a database from before the agents table
        except sa.exc.ProgrammingError:
            return None
        if row is None:
            return None
        return AgentLease(
            host=row.host,
            agent_id=row.agent_id,
            pid=row.pid,
            started_at=row.started_at,
            heartbeat_at=row.heartbeat_at,
        )

    def events(self, build_id: str) -> list[Event]:
        """The build's raw events in log order."""
        _row, events = self._row_and_events(build_id)
        return [
            Event(e.seq, e.ts, e.kind, e.name, e.from_state, e.to_state, e.payload, e.subject)
            for e in events
        ]

    def export(self, build_id: str) -> dict[str, Any]:
        """A self-contained JSON-able document of the build (see ``persistence.export``)."""
        from spawnflow.persistence.export import document

        row, events = self._row_and_events(build_id)
        return document(row, events, schema.current_revision(self.engine))

    # -- many builds ----------------------------------------------------------------

    def builds(
        self,
        *,
        state: str | Iterable[str] | None = None,
        instance: str | None = None,
        host: str | None = None,
        since: Any = None,
        until: Any = None,
        failed_step: str | None = None,
        limit: int | None = 50,
        marker: str | None = None,
    ) -> list[BuildSummary]:
        """Builds newest first (created_at desc, build_id desc), filtered and paginated.

        ``state``: one state, a comma list or an iterable; ``instance``: uuid or name;
        ``since``/``until``: created at or after / before (see ``parse_time``);
        ``failed_step``: builds whose forward run failed at that step; ``marker``: the
        last build id of the previous page; ``limit``: page size (None: all).
        """
        b, e = t.builds.c, t.events.c
        query = sa.select(
            b.build_id,
            b.instance_uuid,
            b.instance_name,
            b.host,
            b.state,
            b.created_at,
            b.updated_at,
            b.error,
        ).where(*_build_filters(state=state, host=host, since=since, until=until))
        if instance:
            # A uuid is looked up by the indexed column only; anything else is a name.
            query = query.where(
                b.instance_uuid == instance.lower()
                if _is_uuid(instance)
                else b.instance_name == instance
            )
        if failed_step:
            query = query.where(
                b.build_id.in_(
                    _failures().with_only_columns(e.build_id).where(e.name == failed_step)
                )
            )
        if limit is not None and limit < 0:
            raise ValueError("limit must be >= 0")
        with self._connect() as conn:
            if marker:
                full = self.resolve(marker, conn)
                at = conn.execute(sa.select(b.created_at).where(b.build_id == full)).scalar_one()
                # The first term is a plain range, so the created_at index serves it.
                query = query.where(
                    b.created_at <= at, sa.or_(b.created_at < at, b.build_id < full)
                )
            query = query.order_by(b.created_at.desc(), b.build_id.desc())
            if limit:
                query = query.limit(limit)
            rows = list(conn.execute(query))
            failed = self._failed_steps(conn, [r.build_id for r in rows])
        return [
            BuildSummary(
                build_id=r.build_id,
                instance_uuid=r.instance_uuid,
                instance_name=r.instance_name,
                host=r.host,
                state=r.state,
                created_at=r.created_at,
                updated_at=r.updated_at,
                error=r.error,
                failed_step=failed.get(r.build_id),
            )
            for r in rows
        ]

    @staticmethod
    def _failed_steps(conn: sa.Connection, build_ids: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        e = t.events.c
        for start in range(0, len(build_ids), 500):
            chunk = build_ids[start : start + 500]
            query = (
                _failures()
                .with_only_columns(e.build_id, e.name)
                .where(e.build_id.in_(chunk))
                .order_by(e.seq)
            )
            for row in conn.execute(query):
                found.setdefault(row.build_id, row.name)
        return found

    def stats(
        self,
        *,
        since: Any = None,
        until: Any = None,
        host: str | None = None,
        state: str | Iterable[str] | None = None,
    ) -> Stats:
        """Builds per lifecycle state, and per step p50/p95/max of forward and revert times.

        Reads every atom state change of the selected builds: narrow with
        ``since``/``until``/``host``/``state`` on a large log.
        """
        b, e = t.builds.c, t.events.c
        where = _build_filters(state=state, host=host, since=since, until=until)
        counts_q = sa.select(b.state, sa.func.count()).where(*where).group_by(b.state)
        steps_q = (
            sa.select(e.subject, e.name, e.from_state, e.to_state, e.ts)
            .where(
                e.kind == ATOM,
                e.to_state.in_(
                    [_RUNNING, _SUCCESS, _FAILURE, _REVERTING, _REVERTED, _REVERT_FAILURE]
                ),
                sa.or_(e.from_state.is_(None), e.from_state != e.to_state),
            )
            .order_by(e.seq)
        )
        if where:
            steps_q = steps_q.where(e.build_id.in_(sa.select(b.build_id).where(*where)))
        forward: dict[str, list[float]] = {}
        reverts: dict[str, list[float]] = {}
        failures: dict[str, int] = {}
        started: dict[str, float] = {}
        revert_started: dict[str, float] = {}
        with self._connect() as conn:
            counts = {row[0]: row[1] for row in conn.execute(counts_q)}
            for row in conn.execution_options(yield_per=5000).execute(steps_q):
                name = row.name or "?"
                forward.setdefault(name, [])
                if row.to_state == _RUNNING:
                    started[row.subject] = row.ts
                elif row.to_state in _FORWARD_DONE:
                    begun = started.pop(row.subject, None)
                    if begun is not None:
                        forward[name].append(row.ts - begun)
                    if row.to_state == _FAILURE:
                        failures[name] = failures.get(name, 0) + 1
                elif row.to_state == _REVERTING:
                    revert_started[row.subject] = row.ts
                else:
                    begun = revert_started.pop(row.subject, None)
                    if begun is not None:
                        reverts.setdefault(name, []).append(row.ts - begun)
        steps = []
        for name, values in forward.items():
            values.sort()
            back = sorted(reverts.get(name, []))
            steps.append(
                StepStats(
                    name=name,
                    runs=len(values),
                    failures=failures.get(name, 0),
                    p50=percentile(values, 50),
                    p95=percentile(values, 95),
                    max=values[-1] if values else None,
                    reverts=len(back),
                    revert_p50=percentile(back, 50),
                    revert_p95=percentile(back, 95),
                )
            )
        ordered = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        return Stats(builds=ordered, steps=steps)


def _build_filters(
    *, state: str | Iterable[str] | None, host: str | None, since: Any, until: Any
) -> list[sa.ColumnElement[bool]]:
    """The ``builds`` terms shared by ``History.builds`` and ``History.stats``."""
    b = t.builds.c
    where = []
    states = _states(state)
    if states:
        where.append(b.state.in_(states))
    if host:
        where.append(b.host == host)
    start, end = parse_time(since), parse_time(until)
    if start is not None:
        where.append(b.created_at >= start)
    if end is not None:
        where.append(b.created_at < end)
    return where


def _failures() -> sa.Select:
    """Forward step failures. Constants are inlined (not bound) so that a partial
    index on exactly these terms can serve the query."""
    e = t.events.c
    return sa.select(e.build_id).where(
        e.kind == sa.literal_column(f"'{ATOM}'"), e.to_state == sa.literal_column(f"'{_FAILURE}'")
    )
