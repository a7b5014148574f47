"""Prometheus metrics of one agent: what it ran, how its steps took, how its host's queue looks.

Each ``Agent`` has its own ``AgentMetrics`` and its own registry (never
prometheus_client's global one: tests and tools run several agents in one
process). The agent calls the hooks here (a run begins and ends, a step
changes state, a recovery decides, an audit finds, the lease is renewed, a
build meets an unavailable log); the queue depth and the age of the oldest
unfinished build are read from the log at scrape time (``LogCollector``,
in ``metrics_http`` with the HTTP endpoint that ``[metrics] bind`` turns
on). The names are listed in ``NAMES`` and in the operations guide; they are
an interface (alert rules, dashboards): rename none without need.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from oslo_config import cfg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from taskflow import states as tf_states

from spawnflow.engine.log_retry import LogWaits
from spawnflow.engine.metrics_http import (
    LOG_METRICS,
    LogCollector,
    MetricsServer,
    parse_bind,
)
from spawnflow.engine.ownership import HostLease
from spawnflow.engine.runner import ProgressCallback
from spawnflow.persistence import lifecycle
from spawnflow.persistence.eventlog import EventLog
from spawnflow.persistence.recovery_rules import HOLD, RESUME, ROLLBACK

ERROR = "ERROR"  # outcome of a run that raised: the build is left unfinished for recovery
# Steps take from milliseconds (disk_info) to minutes (an image download, a boot wait).
STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_STEP_BEGINS = frozenset({tf_states.RUNNING, tf_states.REVERTING})
_STEP_ENDS = frozenset(
    {tf_states.SUCCESS, tf_states.FAILURE, tf_states.REVERTED, tf_states.REVERT_FAILURE}
)
# Series that exist (at 0) from the start, so that rate() and absence alerts work.
_OUTCOMES = {
    lifecycle.SPAWN: (lifecycle.ACTIVE, lifecycle.ROLLED_BACK, lifecycle.FAILED),
    lifecycle.DELETE: (lifecycle.DELETED, lifecycle.FAILED),
}
BUILD_ERRORS, SCRAPE_ERRORS = "build", "scrape"  # label ``where`` of database errors

# Every metric name the agent exports (sample names; a histogram adds
# _bucket, _sum and _count), for the alert rules' test and the docs.
NAMES = (
    "spawnflow_agent_info",
    "spawnflow_builds_started_total",
    "spawnflow_builds_finished_total",
    "spawnflow_builds_in_progress",
    "spawnflow_step_duration_seconds",
    "spawnflow_recoveries_total",
    "spawnflow_audit_findings",
    "spawnflow_audit_last_run_timestamp_seconds",
    "spawnflow_lease_renewals_total",
    "spawnflow_lease_last_renewed_timestamp_seconds",
    "spawnflow_database_errors_total",
    *LOG_METRICS,
)


class AgentMetrics:
    """The metrics of one agent, its hooks, and its endpoint (see the module docstring)."""

    def __init__(self, conf: cfg.ConfigOpts, log_waits: LogWaits) -> None:
        self.conf = conf
        self.registry = CollectorRegistry()
        self._define_build_metrics(self.registry)
        self._define_host_metrics(self.registry)
        self._init_series()
        self.collector = LogCollector(conf.host, self._scrape_failed)
        self.registry.register(self.collector)
        log_waits.on_unavailable.append(self.log_unavailable)
        self.server: MetricsServer | None = None
        self._kinds: dict[str, str] = {}  # build id -> kind, of runs in progress
        self._step_began: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def _define_build_metrics(self, r: CollectorRegistry) -> None:
        self.info = Gauge(
            "spawnflow_agent_info", "The agent: its host and id (always 1).", ["host"], registry=r
        )
        self.started = Counter(
            "spawnflow_builds_started",
            "Runs of a build this agent began (fresh, resumed, rolled back or restarted).",
            ["kind"],
            registry=r,
        )
        self.finished = Counter(
            "spawnflow_builds_finished",
            "Runs of a build that ended, by the build's state afterwards (INTERRUPTED: left "
            "for the next start; ERROR: the run raised).",
            ["kind", "outcome"],
            registry=r,
        )
        self.in_progress = Gauge(
            "spawnflow_builds_in_progress", "Builds this agent runs now.", registry=r
        )
        self.steps = Histogram(
            "spawnflow_step_duration_seconds",
            "Time from a step's RUNNING (REVERTING) to its SUCCESS or FAILURE (REVERTED or "
            "REVERT_FAILURE), the outcome.",
            ["step", "outcome"],
            buckets=STEP_BUCKETS,
            registry=r,
        )

    def _define_host_metrics(self, r: CollectorRegistry) -> None:
        self.recoveries = Counter(
            "spawnflow_recoveries",
            "Recovery decisions for interrupted builds (at start, or when the log came back).",
            ["decision"],
            registry=r,
        )
        self.findings = Gauge(
            "spawnflow_audit_findings",
            "Findings of this agent's last whole-host audit, by status.",
            ["status"],
            registry=r,
        )
        self.audited_at = Gauge(
            "spawnflow_audit_last_run_timestamp_seconds",
            "When this agent's last whole-host audit ended (Unix time; 0: none yet).",
            registry=r,
        )
        self.renewals = Counter(
            "spawnflow_lease_renewals", "Renewals that proved this agent's host lease.", registry=r
        )
        self.renewed_at = Gauge(
            "spawnflow_lease_last_renewed_timestamp_seconds",
            "When the host lease was last taken or renewed (Unix time).",
            registry=r,
        )
        self.db_errors = Counter(
            "spawnflow_database_errors",
            "Times the event log was unavailable: to a build (its first failed write or read, "
            "then each failed retry) or to a scrape.",
            ["where"],
            registry=r,
        )

    def _init_series(self) -> None:
        for kind, outcomes in _OUTCOMES.items():
            self.started.labels(kind)
            for outcome in (*outcomes, lifecycle.INTERRUPTED):
                self.finished.labels(kind, outcome)
        for decision in (RESUME, ROLLBACK, HOLD):
            self.recoveries.labels(decision)
        for where in (BUILD_ERRORS, SCRAPE_ERRORS):
            self.db_errors.labels(where)

    # -- the endpoint -------------------------------------------------------------------

    def check(self) -> None:
        """Refuse a malformed ``[metrics] bind`` (ConfigError) before the agent does anything."""
        parse_bind(self.conf.metrics.bind)

    def bind(self) -> None:
        """Take the port (ConfigError naming ``[metrics] bind`` if it cannot be had)."""
        address = parse_bind(self.conf.metrics.bind)
        if address is not None and self.server is None:
            self.server = MetricsServer(address, self.registry)

    def serve(self, lease: HostLease, log: Callable[[], EventLog | None]) -> None:
        """Answer scrapes from now on (after ``bind``); count the lease's renewals."""
        self.info.clear()
        self.info.labels(self.conf.host).set(1)
        self.renewed_at.set(time.time())  # the lease was just taken: as good as a renewal
        self.collector.log = log
        if self.lease_renewed not in lease.on_renewed:
            lease.on_renewed.append(self.lease_renewed)
        if self.server is not None:
            self.server.start()

    def stop(self) -> None:
        """Close the port (the agent stops, or its start failed)."""
        server, self.server = self.server, None
        if server is not None:
            server.stop()

    @property
    def url(self) -> str | None:
        """``http://host:port/metrics`` being served (None: off or not started)."""
        return None if self.server is None else self.server.url

    # -- hooks ----------------------------------------------------------------------------

    def run(self, build_id: str, body: Callable[..., str], *args: Any) -> str:
        """``body(build_id, *args)`` (one run of a build, returning its state after), counted."""
        self.in_progress.inc()
        outcome = ERROR
        try:
            outcome = body(build_id, *args)
            return outcome
        finally:
            self.in_progress.dec()
            with self._lock:
                kind = self._kinds.pop(build_id, None)
                for key in [k for k in self._step_began if k[0] == build_id]:
                    del self._step_began[key]
            if kind is not None:  # None: the log failed before the build was even read
                self.finished.labels(kind, outcome).inc()

    def began(self, build_id: str, kind: str) -> None:
        """The run read its build (its kind is known): count it started, once per run."""
        with self._lock:
            if build_id in self._kinds:
                return
            self._kinds[build_id] = kind
        self.started.labels(kind).inc()

    def progress(self, inner: ProgressCallback | None) -> ProgressCallback:
        """The runners' step callback: times each step, then calls ``inner`` (the caller's)."""

        def observe(build_id: str, step: str, state: str, elapsed: float) -> None:
            self.step_changed(build_id, step, state)
            if inner is not None:
                inner(build_id, step, state, elapsed)

        return observe

    def step_changed(self, build_id: str, step: str, state: str) -> None:
        key, now = (build_id, step), time.monotonic()
        with self._lock:
            if state in _STEP_BEGINS:
                self._step_began[key] = now
                return
            began = self._step_began.pop(key, None) if state in _STEP_ENDS else None
        if began is not None:  # None: begun before this agent started (resumed)
            self.steps.labels(step, state).observe(now - began)

    def recovered(self, decision: str) -> None:
        self.recoveries.labels(decision).inc()

    def audited(self, counts: dict[str, int]) -> None:
        for status, n in counts.items():
            self.findings.labels(status).set(n)
        self.audited_at.set(time.time())

    def lease_renewed(self) -> None:
        self.renewals.inc()
        self.renewed_at.set(time.time())

    def log_unavailable(self) -> None:
        """A build met an unavailable log (``LogWaits.on_unavailable``)."""
        self.db_errors.labels(BUILD_ERRORS).inc()

    def _scrape_failed(self) -> None:
        self.db_errors.labels(SCRAPE_ERRORS).inc()


__all__ = ["NAMES", "AgentMetrics"]
