"""The ``tap`` VIF driver: a persistent tap we create, that libvirt only opens.

The guest interface is ``<interface type='ethernet'>`` with ``<target
managed='no'/>``. The tap is tagged with an ``ifalias`` naming the instance,
the port and the build (:func:`~spawnflow.virt.vif.base.tap_alias`), so a
re-run of the plug step after a crash recognises the tap it made before the
result was recorded, never adopts a device that someone else made, and a
revert never removes the tap of another build of the same instance (the tap
name only names the port).
"""

from __future__ import annotations

import logging
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from spawnflow.exceptions import VifError
from spawnflow.virt.guest_config import FilterRef, GuestInterface
from spawnflow.virt.vif.base import (
    PlugResult,
    Vif,
    VifDriver,
    check_ifname,
    guest_interface_of,
    tap_alias,
    tap_name,
)
from spawnflow.virt.vif.netlink import delete_link, get_link, link_kind

LOG = logging.getLogger(__name__)


class TapVifDriver(VifDriver):
    """A persistent tap we create; libvirt only opens it (``managed='no'``).

    The tap is single-queue, without packet info (IFF_NO_PI), which is what
    libvirt asks for when it opens it; a multi-queue guest NIC would need a
    multi-queue tap, which this driver does not create.
    """

    def plug(self, vif: Vif, instance_uuid: str, build_id: str) -> PlugResult:
        tap = tap_name(vif.id)
        check_ifname(tap, f"vif {vif.id}: tap")
        alias = tap_alias(instance_uuid, vif.id, build_id)
        try:
            with IPRoute() as ipr:
                link = get_link(ipr, tap)
                if link is None:
                    # TUNSETIFF on an existing persistent tap attaches to it
                    # instead of failing, hence the lookup above rather than
                    # relying on EEXIST.
                    ipr.link("add", ifname=tap, kind="tuntap", mode="tap", ifr={"no_pi": 1})
                    link = get_link(ipr, tap)
                    if link is None:
                        raise VifError(f"vif {vif.id}: tap {tap!r} vanished right after creation")
                    # Tag first, before anything else can fail: the alias is how
                    # a re-run knows this tap is ours. A crash inside this small
                    # window leaves an untagged tap, which a re-run refuses
                    # (safe: we never adopt or delete an unproven device).
                    ipr.link("set", index=link["index"], ifalias=alias)
                    LOG.info("vif %s: created tap %s", vif.id, tap)
                else:
                    self._check_ours(vif, tap, link, alias)
                    LOG.info("vif %s: re-using tap %s created by an earlier run", vif.id, tap)
                # Converge MTU and state on every run: the crash may have come
                # after creation but before these.
                if vif.mtu:
                    ipr.link("set", index=link["index"], mtu=vif.mtu)
                ipr.link("set", index=link["index"], state="up")
        except (NetlinkError, OSError) as exc:
            raise VifError(f"vif {vif.id}: cannot create tap {tap!r}: {exc}") from exc
        return PlugResult(vif_id=vif.id, tap=tap, created_tap=True, created_bridge=False)

    @staticmethod
    def _check_ours(vif: Vif, tap: str, link: Any, alias: str) -> None:
        found = link.get("IFLA_IFALIAS")
        if link_kind(link) != "tun":
            raise VifError(
                f"vif {vif.id}: device {tap!r} exists and is not a tap; refusing to use it"
            )
        if found != alias:
            raise VifError(
                f"vif {vif.id}: tap {tap!r} already exists and was not created by this "
                f"build (alias {found!r}, expected {alias!r}); refusing to use it"
            )

    def unplug(self, vif: Vif, result: PlugResult, instance_uuid: str, build_id: str) -> None:
        if not result.created_tap:
            return
        alias = tap_alias(instance_uuid, vif.id, build_id)
        try:
            with IPRoute() as ipr:
                link = get_link(ipr, result.tap)
                if link is None:
                    return
                if link_kind(link) != "tun" or link.get("IFLA_IFALIAS") != alias:
                    # Ours was removed and someone else (another build of this
                    # instance, say) made a device with the same name since:
                    # not ours to delete.
                    LOG.warning(
                        "vif %s: %s does not carry this build's alias; not removing it",
                        vif.id,
                        result.tap,
                    )
                    return
                delete_link(ipr, link["index"])
                LOG.info("vif %s: removed tap %s", vif.id, result.tap)
        except (NetlinkError, OSError) as exc:
            raise VifError(f"vif {vif.id}: cannot remove tap {result.tap!r}: {exc}") from exc

    def guest_interface(
        self, vif: Vif, result: PlugResult, filterref: FilterRef | None = None
    ) -> GuestInterface:
        return guest_interface_of(
            vif,
            kind="ethernet",
            mac=vif.mac,
            target_dev=result.tap,
            managed_tap=False,
            mtu=vif.mtu,
            filterref=filterref,
        )
