"""A stale agent: paused past its lease, taken over, woken: it writes and touches nothing.

Agent A (``spawnflow agent`` in its own pid namespace) runs four real builds
on qemu:///system. W waits in its ``resume`` step for network-vif-plugged;
three others are held by the harness at the start of ``image``, ``vifs`` (a
tap VIF) and ``domain_create`` (each one's RUNNING committed, nothing of the
step done yet), and the whole of A is SIGSTOPped there, heartbeat included.
A's lease expires; meanwhile an operator cancels the three held builds.
Agent B (another pid namespace, so A's pid means nothing to it) takes the
host over and recovers all four: W resumed to ACTIVE once its port is
plugged, the others rolled back. Then A is continued. It must write nothing
more, exit non-zero saying another agent took over, and leave the host as B
left it: W with exactly one domain, the rolled-back builds with nothing at
all (no domain defined again, no tap made again, no instance directory).
The log must show one owner per step: A's events between A's and B's agent
STARTED, B's after; no step that A finished is run again by B, and the one
A was in the middle of is taken up by B.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
import sqlalchemy as sa

import spawnflow.conf
from spawnflow.engine.events import deliver, request_cancel
from spawnflow.history import History
from spawnflow.persistence import tables as t
from spawnflow.persistence.eventlog import EventLog
from spawnflow.persistence.step_results import VIF_PLUGGED
from spawnflow.virt.vif.base import tap_name
from tests.crash.conftest import ROOT, Harness
from tests.helpers import bridge_vif, leaks, make_spec, new_uuid, tap_vif
from tests.integration.test_persistence_backends import drop_pg_database, fresh_pg_database

pytestmark = pytest.mark.integration

LEASE = 3


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path: Path, postgres_url: str) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/state/spawnflow.sqlite"
        return
    url = fresh_pg_database(postgres_url)
    yield url
    drop_pg_database(url)


class StaleHarness(Harness):
    """Agents in pid namespaces of their own, on a short lease."""

    def __init__(self, tmp_path: Path, uri: str, db_url: str):
        super().__init__(
            tmp_path,
            uri,
            "resume",
            host="stale-" + new_uuid()[:8],
            recovery={"lease_seconds": LEASE},
            database={"connection": db_url},
            network={"vif_plugging_timeout": 120},
        )
        self.url = spawnflow.conf.database_url(self.conf)

    def launch(self, *stop_at: str, name: str = "agent") -> subprocess.Popen:
        args = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
        args += [sys.executable, "-m", "tests.integration.stale_launcher"]
        for point in stop_at:
            args += ["--stop-at", point]
        args += ["--", "--config-file", str(self.conf_path), "agent", "--poll-interval", "0.2"]
        out = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        return subprocess.Popen(
            args,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def events(self) -> list[sa.Row[Any]]:
        engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                return list(conn.execute(sa.select(t.events).order_by(t.events.c.seq)))
        finally:
            engine.dispose()

    def lease(self) -> sa.Row[Any]:
        engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                query = sa.select(t.agents).where(t.agents.c.host == self.conf.host)
                return conn.execute(query).one()
        finally:
            engine.dispose()

    def step_state(self, build_id: str, step: str) -> str | None:
        with History.open(self.url) as history:
            return {s.name: s.state for s in history.build(build_id).steps}.get(step)


def wait_for(
    predicate: Callable[[], Any], what: str, *alive: subprocess.Popen, timeout: float = 90
) -> Any:
    """Poll ``predicate`` until it is true; fail early if an ``alive`` process exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        for proc in alive:
            if proc.poll() is not None:
                raise AssertionError(f"{proc.args} exited {proc.returncode} before {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def agent_pid(unshare: subprocess.Popen) -> int:
    """The agent's pid here: unshare -> the namespace's pid 1 (the launcher) -> the agent."""

    def find() -> int | None:
        for init in children(unshare.pid):
            agents = children(init)
            if agents:
                return agents[0]
        return None

    return wait_for(find, "the agent process in its pid namespace")


def stopped(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"


def agent_started(events: list[sa.Row[Any]]) -> list[sa.Row[Any]]:
    return [e for e in events if e.kind == "agent" and e.to_state == "STARTED"]


def step_events(events: list[sa.Row[Any]], build_id: str) -> list[tuple[int, str, str]]:
    """(seq, step, state) of a build's atom state changes, in log order."""
    return [
        (e.seq, e.name, e.to_state)
        for e in events
        if e.build_id == build_id
        and e.kind == "atom"
        and e.from_state not in (None, e.to_state)  # a change, not a new atom or a result
    ]


def assert_one_owner_per_step(
    events: list[sa.Row[Any]], build_id: str, a_started: int, b_started: int
) -> None:
    """A's steps ran between the two STARTED events, B's after; no step done by both.

    The only step both ran is the one A had RUNNING when it stopped: A never
    finished it, B ran (or reverted) it again.
    """
    changes = step_events(events, build_id)
    assert all(seq > a_started for seq, _step, _state in changes)
    by_a = [(step, state) for seq, step, state in changes if seq < b_started]
    by_b = [(step, state) for seq, step, state in changes if seq > b_started]
    finished_by_a = {step for step, state in by_a if state != "RUNNING"}
    in_flight = {step for step, state in by_a if state == "RUNNING"} - finished_by_a
    assert len(in_flight) == 1, by_a
    forward_by_b = {step for step, state in by_b if state in ("RUNNING", "SUCCESS")}
    assert not forward_by_b & finished_by_a, (by_a, by_b)
    assert in_flight <= {step for step, _state in by_b}, (by_a, by_b)


def assert_one_domain(conn: libvirt.virConnect, spec: dict) -> None:
    uuid = spec["instance"]["uuid"]
    assert conn.lookupByUUIDString(uuid).state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert [d.name() for d in conn.listAllDomains()].count(f"instance-{uuid}") == 1


def domain_state(conn: libvirt.virConnect, spec: dict) -> str:
    try:
        dom = conn.lookupByUUIDString(spec["instance"]["uuid"])
    except libvirt.libvirtError:
        return "no domain"
    state = dom.state()[0]
    return (
        f"domain state {state} (1 running, 3 paused, 5 shut off), persistent {dom.isPersistent()}"
    )


# Where A's stopped builds are when it stops: at the start of a step that
# makes files (image), one that makes a tap (vifs, a tap VIF), one that
# defines and starts the domain (domain_create). B rolls each back.
STOPS = ("image", "vifs", "domain_create")


def stop_spec(step: str, image: Path, bridge: str) -> dict:
    vifs = {"image": [], "vifs": [tap_vif()], "domain_create": [bridge_vif(bridge)]}[step]
    return make_spec(image, vifs=vifs)


def host_calls(output: str) -> str:
    return "\n".join(line for line in output.splitlines() if line.startswith("stale-launcher"))


# Budget: ~20 s per database (two agent starts, four real builds, one lease expiry).
def test_stale_agent_writes_nothing_more_and_leaves_the_host_to_its_successor(
    db_url, tmp_path, libvirt_uri, libvirt_conn, qcow2_image, linux_bridge, cleanup
):
    harness = StaleHarness(tmp_path, libvirt_uri, db_url)
    port = bridge_vif(linux_bridge, active=False)
    waiting = make_spec(qcow2_image, vifs=[port])
    stops = {step: stop_spec(step, qcow2_image, linux_bridge) for step in STOPS}
    cleanup += [spec["instance"]["uuid"] for spec in (waiting, *stops.values())]
    log = EventLog.open(harness.url)

    w_id = harness.queue(waiting)
    points = [f"{step}:{spec['instance']['uuid']}" for step, spec in stops.items()]
    a = harness.launch(*points, name="a")
    b = None
    try:
        wait_for(lambda: harness.step_state(w_id, "resume") == "RUNNING", "W waiting in A", a)
        stopped_ids = {step: harness.queue(spec) for step, spec in stops.items()}
        pid = agent_pid(a)
        wait_for(lambda: stopped(pid), "A to stop itself with every build at its step", a)
        for step, build_id in stopped_ids.items():
            assert harness.step_state(build_id, step) == "RUNNING"
        (a_start,) = agent_started(harness.events())
        wait_for(
            lambda: time.time() - harness.lease().heartbeat_at > LEASE, "A's lease to expire", a
        )
        for build_id in stopped_ids.values():
            request_cancel(log, build_id)  # an operator gives up on them while A hangs

        b = harness.launch(name="b")
        wait_for(lambda: len(agent_started(harness.events())) == 2, "B to take the host over", b)
        deliver(log, waiting["instance"]["uuid"], VIF_PLUGGED, port["id"])
        assert harness.wait_final(w_id, b) == "ACTIVE", harness.output("b")
        for build_id in stopped_ids.values():
            assert harness.wait_final(build_id, b) == "ROLLED_BACK", harness.output("b")
        before = harness.events()

        os.kill(pid, signal.SIGCONT)
        assert a.wait(60) == 1, harness.output("a")
        assert "another agent took over" in harness.output("a")
        assert harness.events() == before, "A wrote after it was continued"
        assert b.poll() is None
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        log.close()

    (_, b_start) = agent_started(before)
    assert b_start.payload["took_over_from"] == a_start.subject
    assert b_start.payload["epoch"] == a_start.payload["epoch"] + 1
    assert harness.lease().agent_id == b_start.subject
    for build_id in (w_id, *stopped_ids.values()):
        assert_one_owner_per_step(before, build_id, a_start.seq, b_start.seq)

    assert_one_domain(libvirt_conn, waiting)
    instances = Path(spawnflow.conf.instances_path(harness.conf))
    left = {
        step: leaks(
            libvirt_conn,
            spec["instance"]["uuid"],
            instances,
            [tap_name(v["id"]) for v in spec["vifs"]],
        )
        for step, spec in stops.items()
    }
    assert left == {step: [] for step in STOPS}, (
        f"A touched the host after it was continued: {left}; "
        f"{domain_state(libvirt_conn, stops['domain_create'])}\n{host_calls(harness.output('a'))}"
    )
