"""The ``nwfilter`` firewall driver: a per-instance libvirt nwfilter on ``clean-traffic``.

Each VIF gets a filter named after the instance uuid, the MAC and the build
id, referencing libvirt's stock ``clean-traffic`` (no MAC/IP/ARP spoofing); the
interface's ``<filterref>`` passes the port IPs. Names carry the build id, so a
filter found on re-run after a crash is known to be this build's, and a revert
only ever undefines its own build's filters: a later build of the same
instance (same uuid, same MACs) defines and uses filters of its own, which an
old build's revert neither removes nor trips over ("nwfilter is in use").
"""

from __future__ import annotations

import functools
import uuid

import libvirt
from lxml import etree

from spawnflow.exceptions import FirewallError, NotSupportedByHost
from spawnflow.virt.firewall.base import FirewallDriver
from spawnflow.virt.host import Host, error_code

BASE_FILTER = "clean-traffic"


def filter_name(instance_uuid: str, mac: str, build_id: str) -> str:
    """The name of build ``build_id``'s filter for the VIF with ``mac``."""
    return f"spawnflow-{instance_uuid}-{mac.replace(':', '')}-{build_id}"


# Filter uuids derive from the name: redefining after a crash replaces the
# filter instead of failing with "already exists with uuid ...".
_FILTER_NAMESPACE = uuid.UUID("5c4b7d0e-2f1a-4c3e-9b8d-7a6f5e4d3c2b")


def filter_xml(name: str) -> str:
    """The ``<filter>`` document of filter ``name``: ``clean-traffic`` and a uuid from the name."""
    root = etree.Element("filter", name=name, chain="root")
    etree.SubElement(root, "uuid").text = str(uuid.uuid5(_FILTER_NAMESPACE, name))
    etree.SubElement(root, "filterref", filter=BASE_FILTER)
    text: str = etree.tostring(root, encoding="unicode")
    return text


class NWFilterFirewall(FirewallDriver):
    """One filter per VIF and build, referencing libvirt's ``clean-traffic``."""

    name = "nwfilter"

    def __init__(self, host: Host):
        self.host = host

    def filter_for(self, instance_uuid: str, mac: str, build_id: str) -> str | None:
        return filter_name(instance_uuid, mac, build_id)

    def exists(self, name: str) -> bool:
        try:
            return self.host.call(
                f"looking up nwfilter {name}", lambda conn: _find(conn, name) is not None
            )
        except libvirt.libvirtError as exc:
            raise FirewallError(f"looking up nwfilter {name}: {exc}") from exc

    def setup(self, instance_uuid: str, macs: list[str], build_id: str) -> list[str]:
        """Define one filter per MAC unless it is there already; return the names.

        A filter of that name is this build's (the name carries the build id)
        and its document is the same on every run, so it is not defined again.
        """
        if not self.host.supports_nwfilter:
            raise NotSupportedByHost(
                f"libvirt at {self.host.uri} has no nwfilter driver; set [firewall] driver = noop"
            )
        if not self.exists(BASE_FILTER):
            raise FirewallError(
                f"base filter {BASE_FILTER} is missing on {self.host.uri} "
                "(install libvirt-daemon-config-nwfilter)"
            )
        names = []
        for mac in macs:
            name = filter_name(instance_uuid, mac, build_id)
            try:
                self.host.call(f"defining nwfilter {name}", functools.partial(_define, name=name))
            except libvirt.libvirtError as exc:
                raise FirewallError(f"defining nwfilter {name}: {exc}") from exc
            names.append(name)
        return names

    def teardown(self, names: list[str]) -> None:
        for name in names:
            try:
                self.host.call(
                    f"undefining nwfilter {name}", functools.partial(_undefine, name=name)
                )
            except libvirt.libvirtError as exc:
                raise FirewallError(f"undefining nwfilter {name}: {exc}") from exc


def _find(conn: libvirt.virConnect, name: str) -> libvirt.virNWFilter | None:
    try:
        return conn.nwfilterLookupByName(name)
    except libvirt.libvirtError as exc:
        if error_code(exc) == libvirt.VIR_ERR_NO_NWFILTER:
            return None
        raise


def _define(conn: libvirt.virConnect, name: str) -> None:
    if _find(conn, name) is None:
        conn.nwfilterDefineXML(filter_xml(name))


def _undefine(conn: libvirt.virConnect, name: str) -> None:
    found = _find(conn, name)
    if found is None:
        return
    try:
        found.undefine()
    except libvirt.libvirtError as exc:
        if error_code(exc) != libvirt.VIR_ERR_NO_NWFILTER:  # gone meanwhile
            raise
