"""The shipped systemd unit, and the sd_notify client the agent talks to systemd with.

``systemd-analyze verify`` runs for real (it works offline: systemd need not
be PID 1; ``tools/install-deps.sh`` installs it), on a copy of the unit whose
ExecStart names this checkout's installed ``spawnflow`` entry point (verify
refuses a command that does not exist). The notifier's datagrams go to real
sockets bound here.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import spawnflow.conf
from spawnflow.cmd.service import Notifier

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "etc/systemd/spawnflow-agent.service"
INSTALLED = "/usr/local/bin/spawnflow"  # what the shipped unit names


def directives(text: str) -> dict[str, list[str]]:
    """``Section.Key`` -> values, in order (systemd allows a key more than once)."""
    found: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return found


def seconds(value: str) -> float:
    """A systemd time span in seconds (the forms the unit uses: 90, 90s, 2min, 1min 30s)."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+)\s*([a-z]*)", value)
    assert parts, value
    return float(sum(int(n) * units[u] for n, u in parts))


def verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: run tools/install-deps.sh (package systemd)"
    entry_point = Path(sys.executable).parent / "spawnflow"
    assert entry_point.exists(), entry_point
    copy = tmp_path / UNIT.name
    copy.write_text(unit_text.replace(INSTALLED, str(entry_point)))
    return subprocess.run(
        [analyze, "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED} " in text
    result = verify(text, tmp_path)
    # verify only warns (exit 0) about an unknown key: any output is a failure.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    broken = UNIT.read_text().replace("WatchdogSec=", "WatchdogSecs=")
    result = verify(broken, tmp_path)
    assert "WatchdogSecs" in result.stdout + result.stderr


def test_the_directives_that_make_it_a_notify_service_that_drains() -> None:
    unit = directives(UNIT.read_text())
    defaults = spawnflow.conf.load([]).recovery
    assert unit["Service.Type"] == ["notify"]
    assert unit["Service.NotifyAccess"] == ["main"]  # qemu-img may not speak for it
    assert unit["Service.Restart"] == ["on-failure"]  # the agent exits 1 when it must go
    (exec_start,) = unit["Service.ExecStart"]
    assert exec_start.split()[-1] == "agent" and "--config-file" in exec_start
    # WATCHDOG=1 comes every lease_seconds/3: the watchdog outlasts six renewals
    # (two lease periods), so a short database outage is the agent's to handle.
    (watchdog,) = unit["Service.WatchdogSec"]
    assert seconds(watchdog) >= 2 * defaults.lease_seconds
    # SIGTERM to the agent alone, and time for the drain before SIGKILL.
    assert unit["Service.KillMode"] == ["mixed"]
    (stop_timeout,) = unit["Service.TimeoutStopSec"]
    assert seconds(stop_timeout) >= defaults.graceful_stop_timeout + 30
    # A root agent drives netlink in the host's namespace and devices under /dev.
    assert "Service.PrivateNetwork" not in unit and "Service.PrivateDevices" not in unit


@pytest.fixture
def listener(tmp_path: Path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(10)
    yield sock, str(path)
    sock.close()


def test_notifier_sends_datagrams_and_takes_the_variables_out(listener) -> None:
    sock, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}
    notifier = Notifier.from_environ(env)
    assert env == {}  # no child inherits them
    assert notifier.watchdog_seconds == 20.0
    assert notifier.ready("running,\n2 recovered")
    assert sock.recv(4096) == b"READY=1\nSTATUS=running, 2 recovered"
    assert notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert notifier.stopping("draining")
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=draining"


def test_notifier_reaches_an_abstract_socket() -> None:
    name = "spawnflow-unit-" + secrets.token_hex(6)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        assert Notifier("@" + name).status("hello")
        assert sock.recv(4096) == b"STATUS=hello"


def test_watchdog_of_another_process_or_none_sends_nothing(listener) -> None:
    sock, path = listener
    other = Notifier.from_environ(
        {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}
    )
    unasked = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert other.watchdog_seconds is None and not other.watchdog()
    assert not unasked.watchdog()
    assert other.status("still here")  # the rest still goes out
    sock.settimeout(0.5)
    assert sock.recv(4096) == b"STATUS=still here"  # the first datagram: no WATCHDOG=1
    with pytest.raises(TimeoutError):
        sock.recv(4096)


def test_outside_systemd_nothing_is_sent() -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.ready("x") and not notifier.watchdog() and not notifier.stopping("x")


def test_a_vanished_socket_does_not_stop_the_agent(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "gone"))
    assert not notifier.ready("x") and not notifier.status("y")
