"""``spawnflow agent`` under a service manager: sd_notify, the watchdog, the drain, the logs.

The agent runs in a subprocess (test:///default driver) with ``$NOTIFY_SOCKET``
naming an abstract datagram socket this test binds, as systemd would for
``Type=notify``. A build left INTERRUPTED before the start must be recovered
before READY=1; WATCHDOG=1 follows each lease renewal (every lease_seconds/3);
SIGTERM gives STOPPING=1 and exit 0. Its log records, in the oslo.log file and
on the terminal, carry the build id and step.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import spawnflow.conf
from spawnflow.engine.queue import queue_build
from spawnflow.flows.spec import parse_spec
from spawnflow.persistence import lifecycle
from spawnflow.persistence.backend import EventLogBackend
from spawnflow.persistence.eventlog import EventLog
from tests.functional.conftest import TEST_DRIVER
from tests.helpers import make_qcow2, make_spec, write_conf

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 60.0  # generous: nothing here waits for a timing, only for events


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket in the abstract namespace, as ``@name`` for $NOTIFY_SOCKET."""
    name = "spawnflow-test-" + secrets.token_hex(6)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    yield sock, "@" + name
    sock.close()


def interrupted_build(conf, spec: dict) -> str:
    """A build its agent left INTERRUPTED (it died inside the flow)."""
    log = EventLog.open(spawnflow.conf.database_url(conf))
    backend = EventLogBackend(eventlog=log)
    try:
        build_id, _ = queue_build(log, backend, parse_spec(spec), conf.host)
        log.transition_build(build_id, lifecycle.RUNNING)
        log.transition_build(build_id, lifecycle.INTERRUPTED, payload={"reason": "test"})
    finally:
        backend.close()
        log.close()
    return build_id


def state_of(conf, build_id: str) -> str:
    log = EventLog.open(spawnflow.conf.database_url(conf), upgrade=False)
    try:
        return log.get_build(build_id).state
    finally:
        log.close()


class Messages:
    """What the agent sent to the notify socket, in order."""

    def __init__(self, sock: socket.socket, proc: subprocess.Popen, out: Path) -> None:
        self.sock, self.proc, self.out = sock, proc, out
        self.received: list[dict[str, str]] = []

    def next_with(self, key: str) -> dict[str, str]:
        """The next message that sets ``key`` (bounded wait)."""
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            self.sock.settimeout(0.5)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                exited = self.proc.poll()
                assert exited is None, f"agent exited {exited}:\n{self.output()}"
                continue
            message = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.received.append(message)
            if key in message:
                return message
        raise AssertionError(f"no {key} within {DEADLINE}s: {self.received}\n{self.output()}")

    def output(self) -> str:
        return "".join(p.read_text() for p in (self.out / "stdout", self.out / "stderr"))


def test_agent_notifies_systemd_and_logs_build_context(tmp_path: Path, notify_socket) -> None:
    sock, address = notify_socket
    oslo_log_file = tmp_path / "agent-oslo.log"
    conf_path = write_conf(
        tmp_path / "agent.conf",
        DEFAULT={"state_path": tmp_path / "state", "host": "svc", "log_file": oslo_log_file},
        images={"allowed_sources": tmp_path},
        libvirt=TEST_DRIVER,
        firewall={"driver": "noop"},
        # Renewed every second: WATCHDOG=1 comes every second.
        recovery={"policy": "resume", "lease_seconds": 3, "graceful_stop_timeout": 10},
    )
    conf = spawnflow.conf.load(["--config-file", str(conf_path)])
    build_id = interrupted_build(conf, make_spec(make_qcow2(tmp_path / "image.qcow2")))

    agent = [sys.executable, "-m", "spawnflow.cmd.main", "--config-file", str(conf_path)]
    agent += ["agent", "--poll-interval", "0.2"]
    env = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "30000000"}
    with (tmp_path / "stdout").open("w") as stdout, (tmp_path / "stderr").open("w") as stderr:
        # WATCHDOG_PID names the agent itself (exec keeps the shell's pid), as systemd's does.
        proc = subprocess.Popen(
            ["sh", "-c", 'WATCHDOG_PID=$$ exec "$@"', "sh", *agent],
            cwd=ROOT,
            stdout=stdout,
            stderr=stderr,
            env=env,
        )
    messages = Messages(sock, proc, tmp_path)
    try:
        ready = messages.next_with("READY")
        # Recovery was decided (and printed) before READY=1.
        assert f"recovering build {build_id}: resume" in (tmp_path / "stdout").read_text()
        assert "1 build(s) recovered" in ready["STATUS"], ready
        for _ in range(2):
            assert messages.next_with("WATCHDOG")["WATCHDOG"] == "1"
        deadline = time.monotonic() + DEADLINE
        while state_of(conf, build_id) != lifecycle.ACTIVE:
            assert time.monotonic() < deadline, messages.output()
            assert proc.poll() is None, messages.output()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert messages.next_with("STOPPING")["STOPPING"] == "1"
        assert proc.wait(DEADLINE) == 0, messages.output()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert messages.received[0].get("READY") == "1", messages.received

    # oslo.log's file: each record a build's thread wrote names the build and step
    # (the agent's progress line of each step names the step itself).
    lines = oslo_log_file.read_text().splitlines()
    progress = re.compile(rf"\[{build_id} (\w+)\] build {build_id}  (\w+) +(\w+)$")
    found = [match.groups() for match in map(progress.search, lines) if match]
    assert {"image", "domain_create", "wait_for_boot"} <= {step for step, _, _ in found}, lines
    assert all(bound == step for bound, step, _ in found), found
    # The terminal (stderr) too; stdout has the agent's own lines, no log record.
    assert f"[{build_id} image] build {build_id}  image" in (tmp_path / "stderr").read_text()
    assert f"[{build_id}" not in (tmp_path / "stdout").read_text()
