"""libvirtd dies under a build and comes back: every build still converges, with zero leaks.

On the real ``qemu:///system``: libvirtd is SIGKILLed at one moment of a real
spawn or of its rollback and started again a second later the way
``tools/start-libvirtd.sh`` starts it (``tests/libvirtd.py``). The step's
libvirt call meets a dead daemon, waits for it (``[libvirt] reconnect_timeout``)
and is retried on a new connection; the guest's QEMU process survives the
daemon and is re-attached. Each moment is hit from the test harness only: the
agent's progress callback, or a wrapped ``virt.domain.define``. A spawn ends
ACTIVE, a rollback ROLLED_BACK with nothing left on the host, no step run twice,
and the log names the call that waited.

The first two tests drop the agent's connection without killing the shared
daemon (``virt-admin client-disconnect``, and a socket path that goes away):
libvirt's close callback tells the host, and a call waits for the socket.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest

from spawnflow.virt import domain as virt_domain
from spawnflow.virt.host import Host
from tests.helpers import bridge_vif, history_of, make_spec
from tests.integration.test_spawn_scenarios import (
    assert_no_leaks,
    assert_rolled_back,
    assert_running,
    at_step,
    luks_volume,
    run,
)
from tests.libvirtd import Libvirtd

pytestmark = pytest.mark.integration

RESTART_DELAY = 0.5  # seconds libvirtd stays dead before it is started again
HOST_LOG = "spawnflow.virt.host"


@pytest.fixture
def libvirtd() -> Iterator[Libvirtd]:
    """Kill/restart libvirtd in the test; it runs again afterwards, pass or fail."""
    with Libvirtd.running() as daemon:
        yield daemon


def lost_calls(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The operations that found libvirtd gone (the host's warnings)."""
    return [
        r.getMessage().split(": lost libvirtd", 1)[0]
        for r in caplog.records
        if r.name == HOST_LOG and ": lost libvirtd at " in r.getMessage()
    ]


def qemu_pid(conn, instance_uuid: str) -> int:
    name = conn.lookupByUUIDString(instance_uuid).name()
    return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text())


# -- the connection dropped, the daemon kept ----------------------------------------------


def _client_ids() -> set[str]:
    out = subprocess.run(
        ["virt-admin", "srv-clients-list", "libvirtd"], capture_output=True, text=True, check=True
    ).stdout
    return {line.split()[0] for line in out.splitlines()[2:] if line.strip()}


def _disconnect(client: str) -> None:
    subprocess.run(
        ["virt-admin", "client-disconnect", "libvirtd", client], capture_output=True, check=True
    )


def _open_and_find_client(host: Host) -> str:
    """Open ``host``'s connection; the libvirtd client id it got (new, and of this pid)."""
    before = _client_ids()
    host.call("connecting", lambda conn: conn.getLibVersion())
    for client in _client_ids() - before:
        info = subprocess.run(
            ["virt-admin", "client-info", "libvirtd", client], capture_output=True, text=True
        ).stdout
        if re.search(rf"^unix_process_id\s*:\s*{os.getpid()}$", info, re.MULTILINE):
            return client
    raise AssertionError("no new libvirtd client of this process")


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_close_callback_tells_the_host_its_connection_is_gone(libvirt_uri):
    host = Host(libvirt_uri, "qemu", reconnect_timeout=30)
    try:
        _disconnect(_open_and_find_client(host))
        # Learnt from libvirt's event loop (close callback / keepalive), with no call made.
        _wait_until(lambda: not host.connected, "the host never learnt the connection closed")
        attempts: list[libvirt.virConnect] = []

        def version(conn: libvirt.virConnect) -> int:
            attempts.append(conn)
            return conn.getLibVersion()

        assert host.call("reading the version", version) > 0
        assert len(attempts) == 1  # re-opened before the call, not after it failed
        assert host.connected
    finally:
        host.close()


def test_a_call_waits_for_the_socket_to_come_back(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=HOST_LOG)
    sock = tmp_path / "libvirt-sock"
    sock.symlink_to("/var/run/libvirt/libvirt-sock")
    host = Host(f"qemu+unix:///system?socket={sock}", "qemu", reconnect_timeout=60)
    try:
        client = _open_and_find_client(host)
        sock.unlink()  # libvirtd is "gone" for this host: nothing listens at its socket
        _disconnect(client)
        back = threading.Timer(1.0, sock.symlink_to, ["/var/run/libvirt/libvirt-sock"])
        back.start()
        attempts: list[libvirt.virConnect] = []

        def domains(conn: libvirt.virConnect) -> int:
            attempts.append(conn)
            return len(conn.listAllDomains())

        assert host.call("listing domains", domains) >= 0
        back.join()
        assert len(attempts) in (1, 2)  # 2 when the close was learnt only from the call
        assert lost_calls(caplog) == ["listing domains"]
        assert any("re-connected to libvirtd" in r.getMessage() for r in caplog.records)
    finally:
        host.close()


# -- libvirtd SIGKILLed and restarted under a real build -----------------------------------


def _killed_at(step: str, state: str, libvirtd: Libvirtd, conn, spec: dict, seen: dict):
    """A progress callback: at ``step`` reaching ``state``, note the guest's QEMU pid (if
    any), then kill libvirtd and have it started again RESTART_DELAY s later."""

    def kill() -> None:
        try:
            seen["qemu_pid"] = qemu_pid(conn, spec["instance"]["uuid"])
        except libvirt.libvirtError:
            seen["qemu_pid"] = None  # no domain yet
        libvirtd.kill_and_restart_after(RESTART_DELAY)

    return at_step(step, state, kill)


# moment: (step, state the kill happens at, the first call that meets the dead daemon)
SPAWN_MOMENTS = {
    "during-define": ("domain_create", "RUNNING", "looking up domain"),
    "during-resume": ("resume", "RUNNING", "resuming domain"),
    "during-wait-for-boot": ("wait_for_boot", "RUNNING", "reading the state of domain"),
}
ROLLBACK_MOMENTS = {
    "revert-of-domain-create": ("domain_create", "REVERTING", "reading the metadata of domain"),
    "revert-of-firewall": ("firewall", "REVERTING", "undefining nwfilter"),
}


def _spec(qcow2_image: Path, linux_bridge: str, tmp_path: Path | None = None) -> tuple[dict, dict]:
    """A spec with an inactive bridge VIF (started paused, resumed on its event), and that
    VIF's port; with a LUKS volume (a libvirt secret) if ``tmp_path`` is given (making
    one takes seconds, so only where a secret meets the restarted daemon)."""
    port = bridge_vif(linux_bridge, active=False)
    volumes = [luks_volume(tmp_path)] if tmp_path is not None else []
    return make_spec(qcow2_image, vifs=[port], volumes=volumes), port


def _event(spec: dict, port: dict, status: str) -> Callable:
    return lambda agent: agent.deliver_event(
        spec["instance"]["uuid"], "network-vif-plugged", port["id"], status=status
    )


def _assert_active_once(conf, outcome, spec, libvirt_conn, tmp_path) -> None:
    assert (outcome.state, outcome.error) == ("ACTIVE", None)
    assert_running(libvirt_conn, spec, tmp_path)
    build = history_of(conf, outcome.build_id)
    assert [(s.state, s.attempts) for s in build.steps] == [("SUCCESS", 1)] * len(build.steps)


@pytest.mark.parametrize("moment", list(SPAWN_MOMENTS))
def test_spawn_survives_a_libvirtd_restart(
    moment, real_conf, qcow2_image, linux_bridge, libvirt_conn, cleanup, libvirtd, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger=HOST_LOG)
    step, state, first_call = SPAWN_MOMENTS[moment]
    conf = real_conf()
    spec, port = _spec(qcow2_image, linux_bridge)
    cleanup.append(spec["instance"]["uuid"])
    seen: dict = {}
    progress, errors = _killed_at(step, state, libvirtd, libvirt_conn, spec, seen)

    outcome = run(conf, spec, progress=progress, events=_event(spec, port, "completed"))

    assert errors == [] and len(libvirtd.kills) == 1
    _assert_active_once(conf, outcome, spec, libvirt_conn, tmp_path)
    assert lost_calls(caplog)[0].startswith(first_call), lost_calls(caplog)
    if seen["qemu_pid"] is not None:  # the guest outlived libvirtd and was re-attached
        assert qemu_pid(libvirt_conn, spec["instance"]["uuid"]) == seen["qemu_pid"]


def test_spawn_survives_a_libvirtd_restart_between_define_and_create(
    real_conf,
    qcow2_image,
    linux_bridge,
    libvirt_conn,
    cleanup,
    libvirtd,
    tmp_path,
    caplog,
    monkeypatch,
):
    caplog.set_level(logging.INFO, logger=HOST_LOG)
    conf = real_conf()
    spec, port = _spec(qcow2_image, linux_bridge)
    cleanup.append(spec["instance"]["uuid"])
    define = virt_domain.define

    def define_then_kill(host: Host, xml: str) -> str:
        uuid = define(host, xml)
        libvirtd.kill_and_restart_after(RESTART_DELAY)
        return uuid

    monkeypatch.setattr(virt_domain, "define", define_then_kill)

    outcome = run(conf, spec, events=_event(spec, port, "completed"))

    assert len(libvirtd.kills) == 1
    _assert_active_once(conf, outcome, spec, libvirt_conn, tmp_path)
    assert lost_calls(caplog)[0].startswith("starting domain"), lost_calls(caplog)


@pytest.mark.parametrize("moment", list(ROLLBACK_MOMENTS))
def test_rollback_survives_a_libvirtd_restart(
    moment, real_conf, qcow2_image, linux_bridge, libvirt_conn, cleanup, libvirtd, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger=HOST_LOG)
    step, state, first_call = ROLLBACK_MOMENTS[moment]
    conf = real_conf(network={"vif_plugging_is_fatal": True})
    # The encryptor's revert runs after the firewall's: its secret meets the new daemon.
    spec, port = _spec(qcow2_image, linux_bridge, tmp_path if step == "firewall" else None)
    cleanup.append(spec["instance"]["uuid"])
    progress, errors = _killed_at(step, state, libvirtd, libvirt_conn, spec, {})

    outcome = run(conf, spec, progress=progress, events=_event(spec, port, "failed"))

    assert errors == [] and len(libvirtd.kills) == 1
    assert_rolled_back(
        conf, outcome, "resume", "VifPlugFailed", f"reported failed for port(s) {port['id']}"
    )
    assert lost_calls(caplog)[0].startswith(first_call), lost_calls(caplog)
    assert_no_leaks(conf, spec, libvirt_conn)
