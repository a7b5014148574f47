"""The libvirt connection outlives a lost connection: which errors mean "lost", and
``Host.call`` re-opening and retrying, on libvirt's in-process test driver.

Only the classification table builds ``libvirtError`` objects by hand (an RPC
error needs a daemon to die); everything else is a real libvirt error from a
real connection: a handle closed under the call, a socket nobody listens on.
The same on a real libvirtd restarted under a build is in
``tests/integration/test_libvirtd_restart.py``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import libvirt
import pytest

from spawnflow.exceptions import DomainError, HostError, LibvirtUnreachable
from spawnflow.virt import domain
from spawnflow.virt.host import Host, is_disconnect
from tests.helpers import load_conf, new_uuid

TEST_URI = "test:///default"


def made_error(code: int, domain_: int, message: str) -> libvirt.libvirtError:
    """A ``libvirtError`` carrying what libvirt would have set (code, domain, message)."""
    exc = libvirt.libvirtError(message)
    exc.err = (code, domain_, message, libvirt.VIR_ERR_ERROR, message, None, None, -1, -1)
    return exc


SYSTEM, INTERNAL = libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_INTERNAL_ERROR
FROM_RPC, FROM_QEMU, FROM_NONE = libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_QEMU, libvirt.VIR_FROM_NONE
SOCKET = "'/var/run/libvirt/libvirt-sock'"


@pytest.mark.parametrize(
    ("code", "domain_", "message", "lost"),
    [
        # What a SIGKILLed libvirtd gave calls in flight, and calls made after it.
        (SYSTEM, FROM_RPC, "Cannot recv data: Connection reset by peer", True),
        (SYSTEM, FROM_RPC, "End of file while reading data: Input/output error", True),
        (INTERNAL, FROM_RPC, "internal error: client socket is closed", True),
        (SYSTEM, FROM_RPC, f"Failed to connect socket to {SOCKET}: Connection refused", True),
        (libvirt.VIR_ERR_RPC, libvirt.VIR_FROM_REMOTE, "unexpected program in reply", True),
        (libvirt.VIR_ERR_NO_CONNECT, FROM_NONE, "no connection driver available", True),
        (libvirt.VIR_ERR_INVALID_CONN, FROM_NONE, "invalid connection pointer in x", True),
        (INTERNAL, FROM_NONE, "connection closed due to keepalive timeout", True),
        # The same codes raised by a driver are failures of the call: never retried.
        (SYSTEM, FROM_QEMU, "cannot open file '/x/disk': No such file or directory", False),
        (INTERNAL, FROM_QEMU, "process exited while connecting to monitor", False),
        (libvirt.VIR_ERR_OPERATION_FAILED, FROM_QEMU, "End of file from qemu monitor", False),
        (libvirt.VIR_ERR_NO_DOMAIN, FROM_QEMU, "Domain not found", False),
        (libvirt.VIR_ERR_OPERATION_INVALID, FROM_QEMU, "domain is not running", False),
        (libvirt.VIR_ERR_NO_SECRET, libvirt.VIR_FROM_SECRET, "secret not found", False),
    ],
)
def test_which_errors_mean_the_connection_is_lost(code, domain_, message, lost):
    assert is_disconnect(made_error(code, domain_, message)) is lost


def test_real_errors_are_classified():
    conn = libvirt.open(TEST_URI)
    with pytest.raises(libvirt.libvirtError) as missing:
        conn.lookupByUUIDString(new_uuid())
    conn.close()
    with pytest.raises(libvirt.libvirtError) as closed:
        conn.getVersion()
    with pytest.raises(libvirt.libvirtError) as refused:
        libvirt.open("qemu+unix:///system?socket=/nonexistent/libvirt-sock")
    assert not is_disconnect(missing.value)
    assert is_disconnect(closed.value)
    assert is_disconnect(refused.value)


@pytest.fixture
def host():
    found = Host(TEST_URI, "test", reconnect_timeout=5)
    yield found
    found.close()


def test_a_call_on_a_connection_closed_under_it_is_retried_on_a_new_one(host):
    seen: list[libvirt.virConnect] = []

    def version(conn: libvirt.virConnect) -> int:
        seen.append(conn)
        if len(seen) == 1:
            conn.close()  # the connection dies under the call
        return conn.getVersion()

    assert host.call("reading the version", version) > 0
    assert len(seen) == 2 and seen[1] is not seen[0]
    assert host.connected


def test_a_failure_of_the_call_itself_is_raised_at_once(host):
    calls = []

    def lookup(conn: libvirt.virConnect) -> None:
        calls.append(conn)
        conn.lookupByUUIDString(new_uuid())

    with pytest.raises(libvirt.libvirtError) as raised:
        host.call("looking up", lookup)
    assert raised.value.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN
    assert len(calls) == 1


def test_a_daemon_that_never_answers_is_unreachable_after_the_timeout():
    host = Host("qemu+unix:///system?socket=/nonexistent/libvirt-sock", "qemu", reconnect_timeout=1)
    calls = []
    with pytest.raises(LibvirtUnreachable) as raised:
        host.call("defining domain d1", calls.append)
    assert isinstance(raised.value, HostError)
    message = str(raised.value)
    assert message.startswith("defining domain d1: libvirtd at qemu+unix:///system")
    assert "is unreachable" in message and "[libvirt] reconnect_timeout" in message
    assert "/nonexistent/libvirt-sock" in message  # the last error says where it looked
    assert calls == []


def test_closing_the_host_ends_a_wait_for_libvirtd():
    host = Host("qemu+unix:///system?socket=/nonexistent/libvirt-sock", "qemu", 600)
    raised: list[BaseException] = []

    def wait() -> None:
        try:
            host.call("starting domain d1", lambda conn: None)
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.3)  # let it fail once and wait
    host.close()
    thread.join(30)
    assert not thread.is_alive()
    assert len(raised) == 1 and isinstance(raised[0], LibvirtUnreachable)
    assert "the host connection was closed" in str(raised[0])


def test_an_unusable_uri_is_a_host_error_at_once():
    host = Host("test:///nonexistent/file.xml", "test", reconnect_timeout=600)
    with pytest.raises(HostError, match="cannot connect to libvirt at test:///nonexistent"):
        host.call("connecting", lambda conn: None)


def test_reconnect_timeout_comes_from_the_config(tmp_path: Path):
    conf = load_conf(tmp_path)
    assert conf.libvirt.reconnect_timeout == 60
    conf = load_conf(tmp_path, libvirt={"connection_uri": TEST_URI, "reconnect_timeout": 7})
    found = Host.from_conf(conf)
    assert (found.uri, found.reconnect_timeout) == (TEST_URI, 7)


DOMAIN_XML = """<domain type='test'>
  <name>{name}</name><uuid>{uuid}</uuid>
  <memory unit='MiB'>64</memory><os><type>hvm</type></os>
</domain>"""


def test_every_domain_call_is_safe_to_repeat(host):
    """What a retry after a lost answer does: each call a second time finds it done."""
    uuid = new_uuid()
    xml = DOMAIN_XML.format(name="sf-" + uuid[:8], uuid=uuid)
    try:
        assert domain.define(host, xml) == uuid
        assert domain.define(host, xml) == uuid
        assert (domain.start(host, uuid, paused=False), domain.start(host, uuid, False)) == (
            True,
            False,
        )
        assert domain.state(host, uuid) == "running"
        host.conn.lookupByUUIDString(uuid).suspend()
        assert (domain.resume(host, uuid), domain.resume(host, uuid)) == (True, False)
        assert (domain.destroy(host, uuid), domain.destroy(host, uuid)) == (True, False)
        assert (domain.undefine(host, uuid), domain.undefine(host, uuid)) == (True, False)
        assert domain.state(host, uuid) == "gone"
        assert not domain.exists(host, uuid)
        with pytest.raises(DomainError, match=f"domain {uuid} vanished before start"):
            domain.start(host, uuid, paused=False)
    finally:
        domain.destroy(host, uuid)
        domain.undefine(host, uuid)
