"""The agent as a process: one owner per host, SIGTERM, cancel, events while down."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

import spawnflow.conf
from spawnflow.engine.events import deliver
from spawnflow.history import History
from spawnflow.persistence.eventlog import EventLog
from spawnflow.virt.vif.base import tap_name
from spawnflow.virt.vif.netlink import tap_exists
from tests.crash.conftest import ROOT, Harness
from tests.crash.test_crash_matrix import assert_clean
from tests.helpers import bridge_vif, make_spec, new_uuid

pytestmark = pytest.mark.integration


def wait_for(predicate, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def step_state(harness: Harness, build_id: str, step: str) -> str | None:
    with History.open(spawnflow.conf.database_url(harness.conf)) as history:
        steps = {s.name: s.state for s in history.build(build_id).steps}
    return steps.get(step)


def cli(harness: Harness, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "spawnflow.cmd.main",
            "--config-file",
            str(harness.conf_path),
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_second_agent_on_the_same_host_refuses(tmp_path, libvirt_uri):
    harness = Harness(tmp_path, libvirt_uri, "resume", host="own-" + new_uuid()[:8])
    first = harness.launch(name="first")
    try:
        wait_for(lambda: "running" in harness.output("first"), what="first agent")
        second = harness.launch(name="second")
        assert second.wait(60) != 0
        assert "owns host" in harness.output("second")
        assert "refusing to start" in harness.output("second")
        assert first.poll() is None  # the owner is untouched
    finally:
        assert harness.stop(first) == 0
    # Once the owner stopped cleanly, a new agent may start.
    third = harness.launch(name="third")
    wait_for(lambda: "running" in harness.output("third"), what="third agent")
    assert harness.stop(third) == 0


def test_sigterm_while_waiting_then_event_while_down_then_resume(
    tmp_path, libvirt_uri, libvirt_conn, qcow2_image, linux_bridge, cleanup
):
    harness = Harness(
        tmp_path,
        libvirt_uri,
        "resume",
        host="term-" + new_uuid()[:8],
        network={"vif_plugging_timeout": 120},
    )
    port = bridge_vif(linux_bridge, active=False)
    spec = make_spec(qcow2_image, vifs=[port])
    cleanup.append(spec["instance"]["uuid"])
    build_id = harness.queue(spec)
    agent = harness.launch(name="first")
    wait_for(lambda: step_state(harness, build_id, "resume") == "RUNNING", what="the wait")
    started = time.monotonic()
    assert harness.stop(agent) == 0, harness.output("first")
    assert time.monotonic() - started < 15  # the wait gave way at once
    assert harness.state(build_id) == "INTERRUPTED"

    # The event arrives while no agent runs: it is persisted, not lost.
    log = EventLog.open(spawnflow.conf.database_url(harness.conf))
    deliver(log, spec["instance"]["uuid"], "network-vif-plugged", port["id"])
    log.close()

    agent = harness.launch(name="second")
    try:
        assert harness.wait_final(build_id, agent) == "ACTIVE", harness.output("second")
    finally:
        assert harness.stop(agent) == 0
    assert "recovering build" in harness.output("second")
    assert tap_exists(tap_name(port["id"]))
    with History.open(spawnflow.conf.database_url(harness.conf)) as history:
        build = history.build(build_id)
    reasons = [t.detail["reason"] for t in build.lifecycle if t.detail and "reason" in t.detail]
    assert any("agent stopped during step resume" in r for r in reasons)
    assert {s.name: s.attempts for s in build.steps}["resume"] == 2


def test_cancel_from_the_cli_rolls_back_with_zero_leaks(
    tmp_path, libvirt_uri, libvirt_conn, qcow2_image, linux_bridge
):
    harness = Harness(
        tmp_path,
        libvirt_uri,
        "resume",
        host="cancel-" + new_uuid()[:8],
        network={"vif_plugging_timeout": 120},
    )
    spec = make_spec(qcow2_image, vifs=[bridge_vif(linux_bridge, active=False)])
    build_id = harness.queue(spec)
    agent = harness.launch()
    try:
        wait_for(lambda: step_state(harness, build_id, "resume") == "RUNNING", what="the wait")
        result = cli(harness, "build", "cancel", build_id)
        assert result.returncode == 0, result.stderr
        assert harness.wait_final(build_id, agent) == "ROLLED_BACK"
    finally:
        assert harness.stop(agent) == 0
    assert_clean(libvirt_conn, harness, spec)
    with History.open(spawnflow.conf.database_url(harness.conf)) as history:
        build = history.build(build_id)
    assert "BuildCancelled" in build.error
    again = cli(harness, "build", "cancel", build_id)
    assert again.returncode != 0 and "already ROLLED_BACK" in again.stderr


def test_spawn_no_wait_is_picked_up_by_the_agent(tmp_path, libvirt_uri, qcow2_image, cleanup):
    harness = Harness(tmp_path, libvirt_uri, "resume", host="queue-" + new_uuid()[:8])
    spec = make_spec(qcow2_image)
    cleanup.append(spec["instance"]["uuid"])
    path = tmp_path / "vm.yaml"
    import yaml

    path.write_text(yaml.safe_dump(spec))
    agent = harness.launch()
    try:
        queued = cli(harness, "spawn", "--no-wait", str(path))
        assert queued.returncode == 0, queued.stderr
        build_id = queued.stdout.split()[1]
        assert harness.wait_final(build_id, agent) == "ACTIVE"
    finally:
        assert harness.stop(agent) == 0
