"""What is on this host, as the host audit sees it: every domain, tap, libvirt secret,
nwfilter and filter binding, each with the build its spawnflow marker names.

A marker is how a step tags what it made with its build id (see the
architecture's *The spawn flow*): a domain's metadata, a tap's ``ifalias``, a
secret's usage id, a filter's name. A resource without one is *foreign* to
spawnflow; the audit lists it and never touches it. Only reading here, plus
the two removals no other module has (a filter binding, a tagged tap by its
alias); everything else an audit removes goes through the primitives the
steps' reverts use. Instance directories and the image cache are
``virt.inventory_files``'.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import libvirt
from lxml import etree
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from spawnflow.exceptions import HostError
from spawnflow.virt.firewall.nwfilter import filter_name
from spawnflow.virt.host import Host, error_code
from spawnflow.virt.metadata import build_id_of
from spawnflow.virt.vif.base import ALIAS_PREFIX, tap_alias
from spawnflow.virt.vif.netlink import delete_link, get_link, link_kind, tap_in_use
from spawnflow.virt.vif.tap import STAGING_PREFIX, remove_staging_tap

DOMAIN = "domain"
TAP = "tap"
SECRET = "secret"  # noqa: S105 - a kind of resource, not a password
NWFILTER = "nwfilter"
BINDING = "binding"

STOCK = "stock"
#: The filters libvirt ships (libvirt-daemon-config-nwfilter): counted, never listed.
STOCK_FILTERS = frozenset(
    {
        "allow-arp",
        "allow-dhcp",
        "allow-dhcp-server",
        "allow-dhcpv6",
        "allow-dhcpv6-server",
        "allow-incoming-ipv4",
        "allow-incoming-ipv6",
        "allow-ipv4",
        "allow-ipv6",
        "clean-traffic",
        "clean-traffic-gateway",
        "no-arp-ip-spoofing",
        "no-arp-mac-spoofing",
        "no-arp-spoofing",
        "no-ip-multicast",
        "no-ip-spoofing",
        "no-ipv6-multicast",
        "no-ipv6-spoofing",
        "no-mac-broadcast",
        "no-mac-spoofing",
        "no-other-l2-traffic",
        "no-other-rarp-traffic",
        "qemu-announce-self",
        "qemu-announce-self-rarp",
    }
)

_UUID = "[0-9a-fA-F-]{36}"
_FILTER = re.compile(rf"^spawnflow-({_UUID})-([0-9a-fA-F]{{12}})-({_UUID})$")
_SECRET_PREFIX = "spawnflow/"  # noqa: S105 - a usage id prefix, not a password


@dataclass(frozen=True)
class HostResource:
    """One thing on the host; ``build_id`` is None when it carries no spawnflow marker.

    ``name`` is what an operator acts on (a domain's uuid, a tap's name, a
    secret's usage id, a filter's name, a binding's port device). ``part``
    names the part of the instance it is (the port of a tap, the volume of a
    secret); ``devices`` are a domain's interface devices (taps libvirt made
    for it); ``detail`` is said beside it (a domain's power state, ...).
    """

    kind: str
    name: str
    build_id: str | None = None
    instance_uuid: str | None = None
    part: str | None = None
    detail: str = ""
    devices: tuple[str, ...] = ()


def parse_tap_alias(alias: str | None) -> tuple[str, str, str] | None:
    """(instance uuid, port id, build id) of a tap alias made by ``tap_alias``, else None."""
    parts = (alias or "").split(":")
    if len(parts) != 4 or parts[0] != ALIAS_PREFIX or not all(parts[1:]):
        return None
    return parts[1], parts[2], parts[3]


def parse_usage(usage: str | None) -> tuple[str, str, str] | None:
    """(instance uuid, volume id, build id) of a secret usage id spawnflow made, else None."""
    if not (usage or "").startswith(_SECRET_PREFIX):
        return None
    parts = (usage or "").split("/")
    if len(parts) != 4 or not all(parts[1:]):
        return None
    return parts[1], parts[2], parts[3]


def parse_filter(name: str) -> tuple[str, str, str] | None:
    """(instance uuid, MAC without colons, build id) of a filter spawnflow made, else None."""
    found = _FILTER.match(name)
    if found is None or filter_name(found[1], found[2], found[3]) != name:
        return None
    return found[1], found[2], found[3]


def _domain(dom: libvirt.virDomain) -> HostResource:
    root = etree.fromstring(dom.XMLDesc(0).encode())
    devices = tuple(
        dev for dev in root.xpath("devices/interface/target/@dev") if isinstance(dev, str)
    )
    build = build_id_of(dom)
    return HostResource(
        DOMAIN,
        str(dom.UUIDString()),
        build,
        str(dom.UUIDString()) if build else None,
        detail=f"{dom.name()}, {'running' if dom.isActive() else 'shut off'}",
        devices=devices,
    )


def domains(host: Host) -> list[HostResource]:
    """Every domain libvirt knows (defined or running), with the build its metadata names."""

    def read(conn: libvirt.virConnect) -> list[HostResource]:
        found = []
        for dom in conn.listAllDomains(0):
            try:
                found.append(_domain(dom))
            except libvirt.libvirtError as exc:
                if error_code(exc) != libvirt.VIR_ERR_NO_DOMAIN:  # gone meanwhile
                    raise
        return found

    try:
        return host.call("listing domains", read)
    except libvirt.libvirtError as exc:
        raise HostError(f"listing domains: {exc}") from exc


def taps() -> list[HostResource]:
    """Every tun/tap device, with the build its spawnflow alias names (staging taps too)."""
    found = []
    try:
        with IPRoute() as ipr:
            links = list(ipr.get_links())
    except (NetlinkError, OSError) as exc:
        raise HostError(f"listing network devices: {exc}") from exc
    for link in links:
        if link_kind(link) != "tun":
            continue
        name = link.get("IFLA_IFNAME")
        alias = link.get("IFLA_IFALIAS")
        marker = parse_tap_alias(alias)
        detail = "in use" if tap_in_use(link) else "not in use"
        if name.startswith(STAGING_PREFIX) and marker is not None:
            detail = "staging (a plug cut short), " + detail
        found.append(
            HostResource(
                TAP,
                name,
                marker[2] if marker else None,
                marker[0] if marker else None,
                part=marker[1] if marker else None,
                detail=detail,
            )
        )
    return found


def secrets(host: Host) -> list[HostResource]:
    """Every libvirt secret (none without a secret driver), by usage id; never its value."""
    if not host.supports_secrets:
        return []

    def read(conn: libvirt.virConnect) -> list[HostResource]:
        found = []
        for secret in conn.listAllSecrets(0):
            usage = secret.usageID() or ""
            marker = parse_usage(usage)
            found.append(
                HostResource(
                    SECRET,
                    usage or str(secret.UUIDString()),
                    marker[2] if marker else None,
                    marker[0] if marker else None,
                    part=marker[1] if marker else None,
                    detail=f"uuid {secret.UUIDString()}",
                )
            )
        return found

    try:
        return host.call("listing secrets", read)
    except libvirt.libvirtError as exc:
        raise HostError(f"listing secrets: {exc}") from exc


def nwfilters(host: Host) -> list[HostResource]:
    """Every nwfilter (none without the driver); libvirt's own have ``detail`` ``STOCK``."""
    if not host.supports_nwfilter:
        return []

    def read(conn: libvirt.virConnect) -> list[HostResource]:
        names = [str(f.name()) for f in conn.listAllNWFilters(0)]
        return [
            _filter(NWFILTER, name, name, STOCK if name in STOCK_FILTERS else "") for name in names
        ]

    try:
        return host.call("listing nwfilters", read)
    except libvirt.libvirtError as exc:
        raise HostError(f"listing nwfilters: {exc}") from exc


def _filter(kind: str, name: str, filter_: str, detail: str = "") -> HostResource:
    marker = parse_filter(filter_)
    return HostResource(
        kind,
        name,
        marker[2] if marker else None,
        marker[0] if marker else None,
        detail=detail,
    )


def bindings(host: Host) -> list[HostResource]:
    """Every filter binding (a filter instantiated on a port), named by its port device."""
    if not host.supports_nwfilter:
        return []

    def read(conn: libvirt.virConnect) -> list[HostResource]:
        found = []
        for binding in conn.listAllNWFilterBindings(0):
            port, filter_ = str(binding.portDev()), str(binding.filterName())
            found.append(_filter(BINDING, port, filter_, detail=f"filter {filter_}"))
        return found

    try:
        return host.call("listing nwfilter bindings", read)
    except libvirt.libvirtError as exc:
        if error_code(exc) == libvirt.VIR_ERR_NO_SUPPORT:
            return []
        raise HostError(f"listing nwfilter bindings: {exc}") from exc


def remove_binding(host: Host, port: str) -> bool:
    """Delete the filter binding of port device ``port``; False if there is none."""

    def run(conn: libvirt.virConnect) -> bool:
        try:
            conn.nwfilterBindingLookupByPortDev(port).delete()
        except libvirt.libvirtError as exc:
            if error_code(exc) == libvirt.VIR_ERR_NO_NWFILTER_BINDING:
                return False
            raise
        return True

    try:
        return host.call(f"deleting the nwfilter binding of {port}", run)
    except libvirt.libvirtError as exc:
        raise HostError(f"deleting the nwfilter binding of {port}: {exc}") from exc


def remove_tagged_tap(name: str, instance_uuid: str, vif_id: str, build_id: str) -> bool:
    """Delete tap ``name`` if it still carries this build's alias and no process holds it.

    The alias is read again right before the delete: a device that took the
    name since, or a tap QEMU has open, is not removed. The build's staging
    tap goes too (the tap driver's own cleanup). False if nothing was removed.
    """
    alias = tap_alias(instance_uuid, vif_id, build_id)
    try:
        with IPRoute() as ipr:
            removed = remove_staging_tap(ipr, alias)
            link = get_link(ipr, name)
            if link is None or link_kind(link) != "tun" or link.get("IFLA_IFALIAS") != alias:
                return removed
            if tap_in_use(link):
                raise HostError(f"tap {name} is held open by a process; not removing it")
            delete_link(ipr, link["index"])
            return True
    except (NetlinkError, OSError) as exc:
        raise HostError(f"removing tap {name}: {exc}") from exc
