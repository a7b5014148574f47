"""PostgreSQL restarted under 20 running builds: every build converges, in order.

The server is really stopped (``pg_ctlcluster stop -m fast``: every open
session is terminated) and started again while one agent runs 20 builds on
libvirt's ``test:///default`` driver (which cannot start a domain paused, so
no build waits for network-vif-plugged; they run straight through). The stop
comes from the progress callback of the fifth build to start its last step,
so that step's own read of the log finds the server gone while the other
builds are between steps and their next write fails. While it is down, the
agent looks for queued builds (and does not fail), says which builds wait
for the database, and keeps its lease. Afterwards every build is ACTIVE (or
ROLLED_BACK where recovery chose so), none FAILED; the projections equal the
replayed events; each build's events follow the lifecycle and TaskFlow's
transitions in flow order; a step ran twice only when it was RUNNING when
the log failed; and the lease's heartbeat goes on.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
import sqlalchemy as sa

from spawnflow import Agent
from spawnflow.engine import admin, recovery
from spawnflow.history import log_wait
from spawnflow.persistence import lifecycle, replay
from spawnflow.persistence import tables as t
from spawnflow.persistence.eventlog import EventLog
from tests.helpers import bridge_vif, load_conf, make_qcow2, make_spec
from tests.integration.event_order import check_build_events
from tests.integration.pg_cluster import Cluster
from tests.integration.test_persistence_backends import drop_pg_database, fresh_pg_database

pytestmark = pytest.mark.integration

BUILDS = 20
# The server is stopped when this many builds reached their last step (the
# others are between earlier steps); it is down at most MAX_DOWN seconds.
STOP_AT = 5
MAX_DOWN = 30.0
TEST_DRIVER = {"connection_uri": "test:///default", "virt_type": "test"}


@pytest.fixture
def test_domains() -> Iterator[list[str]]:
    """Instance uuids whose domains are removed from the in-process test driver after."""
    uuids: list[str] = []
    yield uuids
    conn = libvirt.open(TEST_DRIVER["connection_uri"])
    try:
        for instance in uuids:
            with contextlib.suppress(libvirt.libvirtError):
                dom = conn.lookupByUUIDString(instance)
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
    finally:
        conn.close()


@pytest.fixture
def restartable_pg(postgres_url):
    """(cluster, url of a fresh database on it); the server runs again after the test."""
    cluster = Cluster.serving(postgres_url)
    url = fresh_pg_database(postgres_url)
    try:
        with cluster.running_again():
            yield cluster, url
    finally:
        drop_pg_database(url)


class Restarter:
    """Stops the server when the Nth build starts ``wait_for_boot``; starts it when told.

    The stop happens inside that build's progress callback, between its step's
    durable RUNNING and the step's body, so the step's own read of the log
    (is the build cancelled?) finds the server gone; the other builds are
    between steps, their next write fails.
    """

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.reached = 0
        self.victim: str | None = None
        self.down = threading.Event()
        self.may_start = threading.Event()
        self.up_again = threading.Event()
        self.error: BaseException | None = None
        self._lock = threading.Lock()

    def progress(self, build_id: str, step: str, state: str, _elapsed: float) -> None:
        if (step, state) != ("wait_for_boot", "RUNNING"):
            return
        with self._lock:
            self.reached += 1
            if self.reached != STOP_AT:
                return
        self.victim = build_id
        try:
            self.cluster.stop()
        except BaseException as exc:  # TaskFlow swallows a callback's error: keep it
            self.error = exc
            self.up_again.set()
            return
        finally:
            self.down.set()
        threading.Thread(target=self._start_when_told, name="pg-start").start()

    def _start_when_told(self) -> None:
        try:
            # Bounded: the server comes back even if the test body failed.
            self.may_start.wait(MAX_DOWN)
            self.cluster.start()
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.up_again.set()


def _conf(tmp_path: Path, url: str):
    return load_conf(
        tmp_path,
        DEFAULT={"max_concurrent_builds": BUILDS},
        libvirt=TEST_DRIVER,
        firewall={"driver": "noop"},
        # A heartbeat every second: it meets the outage too.
        recovery={"lease_seconds": 3},
        # Retry the log quickly; never give up within the test.
        database={
            "connection": url,
            "retry_interval": 0.2,
            "max_retry_interval": 1.0,
            "max_retries": 300,
        },
    )


def _while_down(agent: Agent, conf, victim: str) -> None:
    """What the agent does while the server is down: no crash, and it says why."""
    assert agent.pick_up_queued() == []
    deadline = time.monotonic() + MAX_DOWN / 2
    while log_wait(str(conf.state_path), conf.host, victim) is None:
        assert time.monotonic() < deadline, "the agent never said the build waits"
        time.sleep(0.05)
    assert agent.failed is None


def _heartbeat_after(agent: Agent, moment: float) -> None:
    """Wait (bounded) until the lease's heartbeat is renewed after ``moment``."""
    deadline = time.monotonic() + 10
    query = sa.select(t.agents.c.heartbeat_at).where(t.agents.c.host == agent.conf.host)
    log = agent.eventlog
    assert log is not None
    while True:
        with log.engine.connect() as conn:
            if conn.execute(query).scalar_one() > moment:
                return
        assert time.monotonic() < deadline, "the lease was not renewed after the restart"
        time.sleep(0.2)


def test_builds_survive_a_postgresql_restart(
    tmp_path: Path, linux_bridge, restartable_pg, test_domains
):
    cluster, url = restartable_pg
    conf = _conf(tmp_path, url)
    image = make_qcow2(tmp_path / "image.qcow2")
    specs = [make_spec(image, vifs=[bridge_vif(linux_bridge)]) for _ in range(BUILDS)]
    test_domains.extend(spec["instance"]["uuid"] for spec in specs)
    # Queued first (as ``spawn --no-wait`` does): the agent starts all 20 at once.
    build_ids = [admin.queue_build(conf, spec).build_id for spec in specs]
    restarter = Restarter(cluster)
    with Agent(conf, progress=restarter.progress) as agent:
        assert restarter.down.wait(60), "the builds never reached wait_for_boot"
        try:
            assert restarter.error is None, restarter.error
            _while_down(agent, conf, str(restarter.victim))
        finally:
            restarter.may_start.set()
        assert restarter.up_again.wait(60) and restarter.error is None, restarter.error
        restarted = time.time()
        deadline = time.monotonic() + 60
        outcomes = {
            b: agent.wait(b, timeout=max(1.0, deadline - time.monotonic())) for b in build_ids
        }
        _heartbeat_after(agent, restarted)
        assert agent.failed is None, agent.failed
        decisions = dict(agent.recovered)

    states = Counter(o.state for o in outcomes.values())
    for build_id, outcome in outcomes.items():
        decision = decisions.get(build_id)
        allowed = {lifecycle.ACTIVE}
        if decision is not None and decision.action == recovery.ROLLBACK:
            allowed.add(lifecycle.ROLLED_BACK)
        assert outcome.state in allowed, (outcome, decision, states)

    with EventLog.open(url) as log:
        assert replay.replay(log) == replay.current(log)
        faults = {b: check_build_events(log.events(b)) for b in build_ids}
    # The build whose step found the server gone was held, not failed, and
    # the restart hit others between steps too.
    assert faults[str(restarter.victim)], "the build in wait_for_boot never noticed"
    held = sum(bool(f) for f in faults.values())
    assert held > 1, faults
    print(f"\n{BUILDS} builds: {dict(states)}; {held} held and recovered in place")
