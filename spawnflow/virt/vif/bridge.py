"""The ``bridge`` VIF driver: the guest's tap on a Linux bridge; libvirt creates the tap.

The driver ensures the Linux bridge exists and is up. The tap itself is
created by libvirt when the domain starts (``<interface type='bridge'>``); we
give it a fixed name, :func:`~spawnflow.virt.vif.base.tap_name`, so a revert
can find it. libvirt owns that tap and removes it when the domain stops;
unplug only removes one left over by a dead domain, i.e. one that no process
holds open (a tap QEMU is attached to belongs to a running domain, possibly
another build's of the same instance, and is never ours to delete). The
bridge is never deleted, even when this driver created it: like os-vif's
linux_bridge plugin we treat bridges as shared by every instance on the host,
and deleting one could cut off instances that started using it after us.
"""

from __future__ import annotations

import errno
import logging

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from spawnflow.exceptions import VifError
from spawnflow.virt.guest_config import FilterRef, GuestInterface
from spawnflow.virt.vif.base import (
    ALIAS_PREFIX,
    PlugResult,
    Vif,
    VifDriver,
    check_ifname,
    guest_interface_of,
    tap_name,
)
from spawnflow.virt.vif.netlink import IFF_UP, delete_link, get_link, link_kind, tap_in_use

LOG = logging.getLogger(__name__)


class BridgeVifDriver(VifDriver):
    """Guest tap on a Linux bridge; libvirt creates and removes the tap.

    MTU policy: a bridge we create gets ``vif.mtu``. An existing bridge's MTU
    is never changed, since other instances' ports share it; a mismatch is
    logged. The guest tap still gets ``vif.mtu`` through the interface's
    ``<mtu>`` element, which libvirt applies when it creates the tap.
    """

    def plug(self, vif: Vif, instance_uuid: str, build_id: str) -> PlugResult:
        if not vif.bridge:
            raise VifError(f"vif {vif.id}: type 'bridge' needs a bridge name")
        check_ifname(vif.bridge, f"vif {vif.id}: bridge")
        tap = tap_name(vif.id)
        try:
            with IPRoute() as ipr:
                created = self._ensure_bridge(ipr, vif, vif.bridge)
        except (NetlinkError, OSError) as exc:
            raise VifError(f"vif {vif.id}: cannot set up bridge {vif.bridge!r}: {exc}") from exc
        # After a crash between creating the bridge and recording the result the
        # re-run sees an existing bridge and reports created_bridge=False. That
        # is harmless: created_bridge is informational, bridges are never removed.
        return PlugResult(vif_id=vif.id, tap=tap, created_tap=False, created_bridge=created)

    @staticmethod
    def _ensure_bridge(ipr: IPRoute, vif: Vif, name: str) -> bool:
        """Make sure bridge ``name`` (``vif.bridge``) exists and is up; True if we created it."""
        link = get_link(ipr, name)
        created = False
        if link is None:
            try:
                ipr.link("add", ifname=name, kind="bridge")
                created = True
            except NetlinkError as exc:
                # Another build created it between lookup and add: use theirs.
                if exc.code != errno.EEXIST:
                    raise
            link = get_link(ipr, name)
            if link is None:
                raise VifError(f"vif {vif.id}: bridge {name!r} vanished right after creation")
        kind = link_kind(link)
        if kind != "bridge":
            raise VifError(
                f"vif {vif.id}: device {name!r} exists but is a {kind or 'plain'} device, "
                "not a bridge"
            )
        index = link["index"]
        if created and vif.mtu:
            ipr.link("set", index=index, mtu=vif.mtu)
        elif vif.mtu and link.get("IFLA_MTU") != vif.mtu:
            LOG.warning(
                "vif %s: bridge %s has MTU %s, port wants %s; leaving the shared bridge alone",
                vif.id,
                name,
                link.get("IFLA_MTU"),
                vif.mtu,
            )
        if not link["flags"] & IFF_UP:
            ipr.link("set", index=index, state="up")
        if created:
            LOG.info("vif %s: created bridge %s", vif.id, name)
        return created

    def unplug(self, vif: Vif, result: PlugResult, instance_uuid: str, build_id: str) -> None:
        # libvirt deletes the tap when the domain is destroyed; if libvirtd
        # died mid-way, the tap may be left over. Only a tun/tap device with
        # the port's name that nothing holds open is removed: the name only
        # names the port, and a tap in use belongs to a running domain (a later
        # build of this instance, say) that libvirt manages. The bridge stays
        # (see the module docstring).
        try:
            with IPRoute() as ipr:
                link = get_link(ipr, result.tap)
                if link is None:
                    return
                if link_kind(link) != "tun":
                    LOG.warning(
                        "vif %s: %s is not a tap device; not removing it", vif.id, result.tap
                    )
                    return
                if tap_in_use(link):
                    LOG.info(
                        "vif %s: tap %s is in use by a running domain; libvirt owns it, "
                        "not removing it",
                        vif.id,
                        result.tap,
                    )
                    return
                if (link.get("IFLA_IFALIAS") or "").startswith(ALIAS_PREFIX + ":"):
                    # Made by the tap driver for some build, not by libvirt.
                    LOG.warning(
                        "vif %s: %s is a tap of a 'tap' VIF; not removing it", vif.id, result.tap
                    )
                    return
                delete_link(ipr, link["index"])
                LOG.info("vif %s: removed left-over tap %s", vif.id, result.tap)
        except (NetlinkError, OSError) as exc:
            raise VifError(f"vif {vif.id}: cannot remove tap {result.tap!r}: {exc}") from exc

    def guest_interface(
        self, vif: Vif, result: PlugResult, filterref: FilterRef | None = None
    ) -> GuestInterface:
        return guest_interface_of(
            vif,
            kind="bridge",
            mac=vif.mac,
            bridge=vif.bridge,
            target_dev=result.tap,
            mtu=vif.mtu,
            filterref=filterref,
        )
