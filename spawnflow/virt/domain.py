"""Domain primitives: look up, define, start, resume, power state, destroy, undefine.

Every call is safe to repeat: a flow re-runs or reverts a step after a crash
without knowing how far the step got, and :meth:`Host.call` runs a call again
when libvirtd restarted under it (the first attempt may have done its work and
lost only the answer). So each one takes the domain's uuid, looks the domain
up again on every attempt (a domain object dies with its connection), and
looks before it acts: a domain already defined, already running or already
resumed is done; lookups return None for a missing domain and removals
tolerate "already gone".
"""

from __future__ import annotations

import time
from collections.abc import Callable

import libvirt
from lxml import etree

from spawnflow.exceptions import DomainError, HostCallInterrupted
from spawnflow.virt.host import Host, error_code
from spawnflow.virt.metadata import build_id_of

STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}


def _find(conn: libvirt.virConnect, uuid: str) -> libvirt.virDomain | None:
    """The domain ``uuid`` on ``conn``, None if there is none (other errors raise)."""
    try:
        return conn.lookupByUUIDString(uuid)
    except libvirt.libvirtError as exc:
        if error_code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def _get(conn: libvirt.virConnect, uuid: str, doing: str) -> libvirt.virDomain:
    dom = _find(conn, uuid)
    if dom is None:
        raise DomainError(f"domain {uuid} vanished before {doing}")
    return dom


def exists(host: Host, uuid: str) -> bool:
    try:
        return host.call(f"looking up domain {uuid}", lambda conn: _find(conn, uuid) is not None)
    except libvirt.libvirtError as exc:
        raise DomainError(f"looking up domain {uuid}: {exc}") from exc


def build_id(host: Host, uuid: str) -> str | None:
    """The build id spawnflow wrote into domain ``uuid``'s metadata; None if no domain or none."""

    def read(conn: libvirt.virConnect) -> str | None:
        dom = _find(conn, uuid)
        return None if dom is None else build_id_of(dom)

    try:
        return host.call(f"reading the metadata of domain {uuid}", read)
    except libvirt.libvirtError as exc:
        if error_code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise DomainError(f"reading the metadata of domain {uuid}: {exc}") from exc


def define(host: Host, xml: str) -> str:
    """Define the persistent domain ``xml`` unless one with its uuid is defined; its uuid.

    A persistent domain with that uuid is taken as this definition: the
    caller checked that it is its build's (domain metadata), and a build's
    XML is a recorded step result, the same on every run.
    """
    uuid = etree.fromstring(xml.encode()).findtext("uuid") or ""

    def run(conn: libvirt.virConnect) -> None:
        dom = _find(conn, uuid) if uuid else None
        if dom is None or not dom.isPersistent():
            conn.defineXML(xml)

    try:
        host.call(f"defining domain {uuid}", run)
    except libvirt.libvirtError as exc:
        raise DomainError(f"defineXML failed: {exc}") from exc
    return uuid


def start(host: Host, uuid: str, paused: bool) -> bool:
    """Start domain ``uuid`` (paused if asked); False if it was running already."""

    def run(conn: libvirt.virConnect) -> bool:
        dom = _get(conn, uuid, "start")
        if dom.isActive():
            return False
        dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED if paused else 0)
        return True

    try:
        return host.call(f"starting domain {uuid}", run)
    except libvirt.libvirtError as exc:
        raise DomainError(f"starting domain {uuid} failed: {exc}") from exc


def state(host: Host, uuid: str) -> str:
    """The power state of domain ``uuid`` (``running``, ``paused``, ...); ``gone`` if none."""

    def read(conn: libvirt.virConnect) -> str:
        dom = _find(conn, uuid)
        if dom is None:
            return "gone"
        code, _reason = dom.state()
        return STATE_NAMES.get(code, "unknown")

    try:
        return host.call(f"reading the state of domain {uuid}", read)
    except libvirt.libvirtError as exc:
        if error_code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
            return "gone"
        raise DomainError(f"reading state of domain {uuid}: {exc}") from exc


def resume(host: Host, uuid: str) -> bool:
    """Resume domain ``uuid`` if it is paused; False if it was not paused."""

    def run(conn: libvirt.virConnect) -> bool:
        dom = _get(conn, uuid, "resume")
        if dom.state()[0] != libvirt.VIR_DOMAIN_PAUSED:
            return False
        dom.resume()
        return True

    try:
        return host.call(f"resuming domain {uuid}", run)
    except libvirt.libvirtError as exc:
        raise DomainError(f"resuming domain {uuid} failed: {exc}") from exc


def shutdown(
    host: Host, uuid: str, timeout: float, should_stop: Callable[[], bool] = lambda: False
) -> bool:
    """Ask the guest to power off (ACPI) and wait up to ``timeout`` s; True once it is off.

    False when the guest did not stop in time (or ignores ACPI): the caller
    destroys it then, as nova does after ``shutdown_timeout``. A missing or
    stopped domain is off. Raises HostCallInterrupted when ``should_stop``
    says so while waiting.
    """

    def request(conn: libvirt.virConnect) -> bool:
        dom = _find(conn, uuid)
        if dom is None or not dom.isActive():
            return True
        dom.shutdown()
        return False

    try:
        if host.call(f"shutting down domain {uuid}", request):
            return True
    except libvirt.libvirtError:
        # Refused: gone or stopped meanwhile (off), or a guest that cannot take
        # the request, e.g. a paused one (libvirt: "domain is not running") or
        # one without ACPI: not off, the caller destroys it. The state says which.
        return state(host, uuid) in ("shutoff", "gone")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if should_stop():
            raise HostCallInterrupted(f"stopped while domain {uuid} shut down")
        if state(host, uuid) in ("shutoff", "gone"):
            return True
        time.sleep(0.5)
    return False


def destroy(host: Host, uuid: str) -> bool:
    """Power off hard; True if it was running. Tolerates a missing or stopped domain."""

    def run(conn: libvirt.virConnect) -> bool:
        dom = _find(conn, uuid)
        if dom is None or not dom.isActive():
            return False
        dom.destroy()
        return True

    try:
        return host.call(f"destroying domain {uuid}", run)
    except libvirt.libvirtError as exc:
        if error_code(exc) in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
            return False
        raise DomainError(f"destroying domain {uuid} failed: {exc}") from exc


def _undefine(dom: libvirt.virDomain) -> None:
    flags = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
    try:
        dom.undefineFlags(flags)
    except libvirt.libvirtError as exc:
        if error_code(exc) not in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT):
            raise
        dom.undefine()  # drivers without the flags (e.g. the test driver)


def undefine(host: Host, uuid: str) -> bool:
    """Remove the persistent definition; True if one was removed.

    Callers destroy first: undefining a running domain leaves it running as a
    transient one, which is exactly the leak nova has.
    """

    def run(conn: libvirt.virConnect) -> bool:
        dom = _find(conn, uuid)
        if dom is None or not dom.isPersistent():
            return False
        _undefine(dom)
        return True

    try:
        return host.call(f"undefining domain {uuid}", run)
    except libvirt.libvirtError as exc:
        if error_code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
            return False
        raise DomainError(f"undefining domain {uuid} failed: {exc}") from exc
