"""An agent's Prometheus endpoint, scraped over HTTP and checked against the log's own counts."""

from __future__ import annotations

import socket
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import spawnflow.conf
from spawnflow import Agent
from spawnflow.client import Client
from spawnflow.engine.queue import queue_delete
from spawnflow.exceptions import ConfigError
from spawnflow.history import History
from tests.helpers import load_conf, make_qcow2, make_spec

TEST_DRIVER = {"connection_uri": "test:///default", "virt_type": "test"}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _conf(tmp_path: Path, bind: str):
    return load_conf(
        tmp_path,
        libvirt=TEST_DRIVER,
        firewall={"driver": "noop"},
        metrics={"bind": bind},
        recovery={"lease_seconds": 3},  # renewed every second
    )


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def _until(ready, what: str, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while not (found := ready()):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return found


def test_metrics_match_the_log(tmp_path):
    conf = _conf(tmp_path, f"127.0.0.1:{free_port()}")
    image = make_qcow2(tmp_path / "image.qcow2")
    agent = Agent(conf)
    agent.start()
    url = agent.metrics.url
    try:
        active = make_spec(image)
        deleted = make_spec(image)
        bad = make_spec(image)
        bad["image"]["checksum"] = "sha256:" + "0" * 64
        for spec, state in ((active, "ACTIVE"), (deleted, "ACTIVE"), (bad, "ROLLED_BACK")):
            assert agent.wait(agent.start_build(spec), timeout=60).state == state
        outcome = agent.delete_instance(deleted["instance"]["uuid"], timeout=60, force=True)
        assert outcome.state == "DELETED"
        db_url = spawnflow.conf.database_url(conf)
        with Client(db_url) as client:  # queued for this host; nobody picks it up here
            queued = client.start_build(make_spec(image), host=conf.host)
        with History.open(db_url) as history:
            stats = history.stats(host=conf.host)
            builds = {b.build_id: b for b in history.builds(host=conf.host, limit=None)}
        first = scrape(url)
        assert value(first, "spawnflow_agent_info", host=conf.host) == 1
        _check_builds(first, stats.builds, builds, queued)
        _check_steps(first, stats.steps)
        assert value(first, "spawnflow_database_up") == 1
        assert value(first, "spawnflow_queue_depth") == 1 == stats.builds["QUEUED"]
        assert value(first, "spawnflow_unfinished_builds", state="QUEUED") == 1
        assert value(first, "spawnflow_oldest_unfinished_build_age_seconds") > 0
        assert value(first, "spawnflow_builds_in_progress") == 0
        assert total(first, "spawnflow_recoveries_total") == 0  # a fresh database
        assert value(first, "spawnflow_database_errors_total", where="build") == 0
        # The lease is renewed every second: the count goes on growing.
        renewed = value(first, "spawnflow_lease_renewals_total")
        _until(
            lambda: value(scrape(url), "spawnflow_lease_renewals_total") > renewed,
            "lease renewals did not increase",
        )
        assert value(scrape(url), "spawnflow_lease_last_renewed_timestamp_seconds") > 0
    finally:
        agent.stop()
    assert agent.metrics.url is None
    with pytest.raises(OSError):
        scrape(url)  # the port is closed


def _check_builds(samples: Samples, states: dict[str, int], builds: dict, queued: str) -> None:
    """Runs started and finished against the builds in the log (one run each here)."""
    spawns = [b for b in builds.values() if b.build_id != queued and b.state != "DELETED"]
    assert value(samples, "spawnflow_builds_started_total", kind="spawn") == 3
    assert value(samples, "spawnflow_builds_started_total", kind="delete") == 1
    assert len(builds) == 5  # three spawns, one delete, one queued
    # The deleted instance's spawn went ACTIVE before its delete made it DELETED.
    assert states == {"ACTIVE": 1, "ROLLED_BACK": 1, "DELETED": 2, "QUEUED": 1}
    assert value(samples, "spawnflow_builds_finished_total", kind="spawn", outcome="ACTIVE") == (
        states["ACTIVE"] + 1
    )
    assert (
        value(samples, "spawnflow_builds_finished_total", kind="spawn", outcome="ROLLED_BACK")
        == states["ROLLED_BACK"]
        == sum(b.state == "ROLLED_BACK" for b in spawns)
    )
    assert value(samples, "spawnflow_builds_finished_total", kind="delete", outcome="DELETED") == 1
    assert total(samples, "spawnflow_builds_finished_total", outcome="FAILED") == 0
    assert total(samples, "spawnflow_builds_finished_total", outcome="INTERRUPTED") == 0


def _check_steps(samples: Samples, steps: list) -> None:
    """Each step's histogram counts equal the log's forward runs, failures and reverts."""
    assert steps
    name = "spawnflow_step_duration_seconds_count"
    for step in steps:
        ok = total(samples, name, step=step.name, outcome="SUCCESS")
        failed = total(samples, name, step=step.name, outcome="FAILURE")
        reverted = total(samples, name, step=step.name, outcome="REVERTED")
        assert (ok + failed, failed, reverted) == (step.runs, step.failures, step.reverts), step
    assert total(samples, name, step="image", outcome="FAILURE") == 1  # the bad checksum
    assert total(samples, name, step="disk_info", outcome="REVERTED") == 1
    assert total(samples, name, step="undefine_domain", outcome="SUCCESS") == 1  # the delete
    assert total(samples, "spawnflow_step_duration_seconds_sum") > 0


@pytest.mark.parametrize("bind", ["127.0.0.1", "127.0.0.1:http", "[127.0.0.1]:9465", "h:70000"])
def test_a_bad_bind_is_refused_before_anything_runs(tmp_path, bind):
    conf = _conf(tmp_path, bind)
    with pytest.raises(ConfigError, match=r"\[metrics\] bind"):
        Agent(conf).start()
    assert not (Path(conf.state_path) / "spawnflow.sqlite").exists()  # the log was not opened


def test_a_busy_port_stops_the_start_and_gives_the_host_back(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        conf = _conf(tmp_path, f"127.0.0.1:{busy.getsockname()[1]}")
        with pytest.raises(ConfigError, match=r"\[metrics\] bind.*cannot listen"):
            Agent(conf).start()
    conf.set_override("bind", "127.0.0.1:0", group="metrics")  # 0: a free port
    with Agent(conf) as agent:  # the host lease was given back
        assert agent.metrics.url is not None
        assert value(scrape(agent.metrics.url), "spawnflow_database_up") == 1


def test_recoveries_and_the_audit_are_counted(tmp_path, test_conn):
    conf = _conf(tmp_path, "127.0.0.1:0")
    image = make_qcow2(tmp_path / "image.qcow2")
    spec = make_spec(image)
    with Agent(conf) as agent:
        assert agent.wait(agent.start_build(spec), timeout=60).state == "ACTIVE"
        row, _ = queue_delete(agent.eventlog, agent.backend, spec["instance"]["uuid"])
        agent.eventlog.transition_build(row.build_id, "DELETING")  # as a killed agent leaves it
    with Agent(conf) as agent:
        assert agent.wait(row.build_id, timeout=60).state == "DELETED"
        assert agent.recovered[row.build_id].action == "resume"
        report = agent.audit()
        samples = scrape(agent.metrics.url)
    assert value(samples, "spawnflow_recoveries_total", decision="resume") == 1
    assert value(samples, "spawnflow_recoveries_total", decision="rollback") == 0
    assert value(samples, "spawnflow_builds_finished_total", kind="delete", outcome="DELETED") == 1
    assert value(samples, "spawnflow_builds_started_total", kind="spawn") == 0  # this agent's
    for status, n in report.counts().items():
        assert value(samples, "spawnflow_audit_findings", status=status) == n
    assert value(samples, "spawnflow_audit_last_run_timestamp_seconds") > 0
