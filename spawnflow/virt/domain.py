"""Domain primitives: look up, define, start, resume, power state, destroy, undefine.

Every call is safe to repeat: lookups return None for a missing domain and
removals tolerate "already gone", because a flow re-runs or reverts a step
after a crash without knowing how far the step got.
"""

from __future__ import annotations

import libvirt

from spawnflow.exceptions import DomainError
from spawnflow.virt.host import Host, error_code

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


def lookup(host: Host, uuid: str) -> libvirt.virDomain | None:
    try:
        return host.conn.lookupByUUIDString(uuid)
    except libvirt.libvirtError as exc:
        if error_code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise DomainError(f"looking up domain {uuid}: {exc}") from exc


def define(host: Host, xml: str) -> libvirt.virDomain:
    """defineXML; with the same uuid and name it replaces the definition (idempotent)."""
    try:
        return host.conn.defineXML(xml)
    except libvirt.libvirtError as exc:
        raise DomainError(f"defineXML failed: {exc}") from exc


def start(dom: libvirt.virDomain, paused: bool) -> None:
    try:
        dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED if paused else 0)
    except libvirt.libvirtError as exc:
        raise DomainError(f"starting domain {dom.UUIDString()} failed: {exc}") from exc


def state(dom: libvirt.virDomain) -> str:
    try:
        code, _reason = dom.state()
    except libvirt.libvirtError as exc:
        if error_code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
            return "gone"
        raise DomainError(f"reading state of domain {dom.UUIDString()}: {exc}") from exc
    return STATE_NAMES.get(code, "unknown")


def resume(dom: libvirt.virDomain) -> None:
    try:
        dom.resume()
    except libvirt.libvirtError as exc:
        raise DomainError(f"resuming domain {dom.UUIDString()} failed: {exc}") from exc


def destroy(host: Host, uuid: str) -> bool:
    """Power off hard; True if it was running. Tolerates a missing or stopped domain."""
    dom = lookup(host, uuid)
    if dom is None:
        return False
    try:
        if not dom.isActive():
            return False
        dom.destroy()
        return True
    except libvirt.libvirtError as exc:
        if error_code(exc) in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
            return False
        raise DomainError(f"destroying domain {uuid} failed: {exc}") from exc


def undefine(host: Host, uuid: str) -> bool:
    """Remove the persistent definition; True if one was removed.

    Callers destroy first: undefining a running domain leaves it running as a
    transient one, which is exactly the leak nova has.
    """
    dom = lookup(host, uuid)
    if dom is None:
        return False
    flags = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
    try:
        if not dom.isPersistent():
            return False
        try:
            dom.undefineFlags(flags)
        except libvirt.libvirtError as exc:
            if (
                error_code(exc) != libvirt.VIR_ERR_INVALID_ARG
                and error_code(exc) != libvirt.VIR_ERR_NO_SUPPORT
            ):
                raise
            dom.undefine()  # drivers without the flags (e.g. the test driver)
        return True
    except libvirt.libvirtError as exc:
        if error_code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
            return False
        raise DomainError(f"undefining domain {uuid} failed: {exc}") from exc
