"""The agent's metrics without an agent: [metrics] bind, the log collector, the step timer."""

from __future__ import annotations

import shutil
import socket
import urllib.request
import uuid
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

import spawnflow.conf
from spawnflow.engine.log_retry import LogWaits
from spawnflow.engine.metrics import NAMES, AgentMetrics
from spawnflow.engine.metrics_http import LogCollector, MetricsServer, parse_bind
from spawnflow.exceptions import ConfigError
from spawnflow.persistence.eventlog import EventLog


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("", None),
        ("  ", None),
        ("127.0.0.1:9465", ("127.0.0.1", 9465)),
        ("[::1]:9465", ("::1", 9465)),
        ("[::]:0", ("::", 0)),
        ("localhost:9465", ("localhost", 9465)),
        ("metrics.example.org:80", ("metrics.example.org", 80)),
    ],
)
def test_bind_values(text, address):
    assert parse_bind(text) == address


@pytest.mark.parametrize(
    "text",
    ["9465", "127.0.0.1", ":9465", "::1:9465", "[::1]", "[nope]:9465", "a b:1", "h:65536", "h:-1"],
)
def test_bad_bind_values_name_the_option(text):
    with pytest.raises(ConfigError, match=r"^\[metrics\] bind = "):
        parse_bind(text)


def test_ipv6_endpoint_serves_the_registry():
    if not socket.has_ipv6:  # pragma: no cover - this machine has it
        pytest.fail("no IPv6 on this machine")
    registry = CollectorRegistry()
    server = MetricsServer(("::1", 0), registry)
    server.start()
    try:
        assert server.url.startswith("http://[::1]:")
        with urllib.request.urlopen(server.url, timeout=10) as response:
            assert response.status == 200
    finally:
        server.stop()


def _queue(log: EventLog, host: str) -> None:
    log.create_build(
        str(uuid.uuid4()),
        instance_uuid=str(uuid.uuid4()),
        instance_name="vm",
        host=host,
        spec={},
    )


def test_collector_reads_this_hosts_queue_and_survives_the_database_going(tmp_path: Path):
    """A scrape never fails: with the log gone, the last values and database_up 0."""
    where = tmp_path / "db"
    where.mkdir()
    log = EventLog.open(f"sqlite:///{where}/log.sqlite")
    failures: list[None] = []
    collector = LogCollector("h1", lambda: failures.append(None), cache_seconds=0)
    collector.log = lambda: log
    registry = CollectorRegistry()
    registry.register(collector)
    _queue(log, "h1")
    _queue(log, "h1")
    _queue(log, "h2")  # another host's: not ours
    assert registry.get_sample_value("spawnflow_queue_depth") == 2
    assert registry.get_sample_value("spawnflow_unfinished_builds", {"state": "QUEUED"}) == 2
    assert registry.get_sample_value("spawnflow_oldest_unfinished_build_age_seconds") > 0
    assert registry.get_sample_value("spawnflow_database_up") == 1
    log.engine.dispose()
    shutil.rmtree(where)  # the database is gone: no connection can be opened
    text = generate_latest(registry).decode()  # does not raise
    assert "spawnflow_database_up 0.0" in text
    assert registry.get_sample_value("spawnflow_queue_depth") == 2  # the last value read
    assert registry.get_sample_value("spawnflow_oldest_unfinished_build_age_seconds") > 0
    assert failures
    log.close_quietly()


def test_collector_reads_at_most_once_per_cache_period(tmp_path: Path):
    log = EventLog.open(f"sqlite:///{tmp_path}/log.sqlite")
    collector = LogCollector("h1", lambda: None, cache_seconds=3600)
    collector.log = lambda: log
    registry = CollectorRegistry()
    registry.register(collector)
    assert registry.get_sample_value("spawnflow_queue_depth") == 0
    _queue(log, "h1")
    assert registry.get_sample_value("spawnflow_queue_depth") == 0  # cached
    collector.cache_seconds = 0
    assert registry.get_sample_value("spawnflow_queue_depth") == 1
    log.close()


@pytest.fixture
def metrics(tmp_path: Path) -> AgentMetrics:
    conf = spawnflow.conf.load([])
    conf.set_override("host", "h1")
    return AgentMetrics(conf, LogWaits(conf))


def test_names_are_what_the_registry_exports(metrics: AgentMetrics):
    exported = {family.name for family in metrics.registry.collect()}
    # prometheus_client names a counter's family without its _total.
    listed = {name.removesuffix("_total") for name in NAMES}
    assert exported == listed


def test_step_durations(metrics: AgentMetrics):
    get = metrics.registry.get_sample_value
    metrics.progress(None)("b1", "image", "RUNNING", 0.0)
    metrics.progress(None)("b1", "image", "FAILURE", 0.0)
    metrics.step_changed("b1", "image", "REVERTING")
    metrics.step_changed("b1", "image", "REVERTED")
    metrics.step_changed("b2", "vifs", "SUCCESS")  # begun before this agent: not timed
    count = "spawnflow_step_duration_seconds_count"
    assert get(count, {"step": "image", "outcome": "FAILURE"}) == 1
    assert get(count, {"step": "image", "outcome": "REVERTED"}) == 1
    assert get(count, {"step": "vifs", "outcome": "SUCCESS"}) is None
    seen = []
    metrics.progress(lambda *args: seen.append(args))("b1", "vifs", "RUNNING", 1.5)
    assert seen == [("b1", "vifs", "RUNNING", 1.5)]  # the caller's callback still called


def test_runs_started_and_finished(metrics: AgentMetrics):
    get = metrics.registry.get_sample_value

    def run(build_id: str, kind: str | None, outcome: str) -> str:
        if kind is not None:
            metrics.began(build_id, kind)
            metrics.began(build_id, kind)  # read again after a log fault: one run still
        assert get("spawnflow_builds_in_progress") == 1
        if outcome == "boom":
            raise RuntimeError(outcome)
        return outcome

    assert metrics.run("b1", run, "spawn", "ACTIVE") == "ACTIVE"
    with pytest.raises(RuntimeError):
        metrics.run("b2", run, "delete", "boom")
    metrics.run("b3", run, None, "INTERRUPTED")  # the log failed before the build was read
    assert get("spawnflow_builds_in_progress") == 0
    assert get("spawnflow_builds_started_total", {"kind": "spawn"}) == 1
    assert get("spawnflow_builds_started_total", {"kind": "delete"}) == 1
    finished = "spawnflow_builds_finished_total"
    assert get(finished, {"kind": "spawn", "outcome": "ACTIVE"}) == 1
    assert get(finished, {"kind": "delete", "outcome": "ERROR"}) == 1
    assert get(finished, {"kind": "spawn", "outcome": "INTERRUPTED"}) == 0


def test_audit_recoveries_and_database_errors(metrics: AgentMetrics):
    get = metrics.registry.get_sample_value
    metrics.audited({"ok": 3, "orphan": 1})
    metrics.recovered("resume")
    waits = LogWaits(metrics.conf)
    waits.on_unavailable.append(metrics.log_unavailable)
    waits.met_unavailable()
    assert get("spawnflow_audit_findings", {"status": "orphan"}) == 1
    assert get("spawnflow_audit_last_run_timestamp_seconds") > 0
    assert get("spawnflow_recoveries_total", {"decision": "resume"}) == 1
    assert get("spawnflow_recoveries_total", {"decision": "hold"}) == 0
    assert get("spawnflow_database_errors_total", {"where": "build"}) == 1
