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

import errno
import hashlib
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

#: First characters of a staging tap's name (see the module docstring).
STAGING_PREFIX = "sft"


def staging_tap_name(alias: str) -> str:
    """The name a tap is made under before it is tagged with ``alias`` and renamed.

    ``sft`` + 12 hex characters of the alias's SHA-256 (15 bytes, the most
    Linux allows): only this build's plug of this port makes a device of
    that name, so a re-run or a revert may remove it untagged.
    """
    return STAGING_PREFIX + hashlib.sha256(alias.encode()).hexdigest()[:12]


def remove_staging_tap(ipr: IPRoute, alias: str) -> bool:
    """Remove the staging tap a crash left for ``alias``; True if there was one.

    Left alone (with a warning) if the device is not a tap or carries
    another alias: then it is not ours, whatever its name.
    """
    staging = staging_tap_name(alias)
    link = get_link(ipr, staging)
    if link is None:
        return False
    if link_kind(link) != "tun" or link.get("IFLA_IFALIAS") not in (None, alias):
        LOG.warning("%s is not this build's staging tap; not removing it", staging)
        return False
    delete_link(ipr, link["index"])
    LOG.info("removed staging tap %s left by an interrupted plug", staging)
    return True


def create_tagged_tap(ipr: IPRoute, tap: str, alias: str) -> Any:
    """Make tap ``tap`` tagged with ``alias``, never visible under ``tap`` untagged.

    Made under its staging name, tagged, then renamed (see the module
    docstring). Returns the final link. Raises VifError if ``tap`` appeared
    meanwhile (the staging tap is then removed).
    """
    remove_staging_tap(ipr, alias)
    staging = staging_tap_name(alias)
    ipr.link("add", ifname=staging, kind="tuntap", mode="tap", ifr={"no_pi": 1})
    link = get_link(ipr, staging)
    if link is None:
        raise VifError(f"staging tap {staging!r} vanished right after creation")
    ipr.link("set", index=link["index"], ifalias=alias)
    try:
        # A new tap is down, and a down device may be renamed.
        ipr.link("set", index=link["index"], ifname=tap)
    except NetlinkError as exc:
        delete_link(ipr, link["index"])
        if exc.code == errno.EEXIST:
            raise VifError(f"device {tap!r} appeared while its tap was being made") from exc
        raise
    final = get_link(ipr, tap)
    if final is None:
        raise VifError(f"tap {tap!r} vanished right after creation")
    return final


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
                    link = create_tagged_tap(ipr, tap, alias)
                    LOG.info("vif %s: created tap %s", vif.id, tap)
                else:
                    self._check_ours(vif, tap, link, alias)
                    # Renamed, then the crash: a new staging tap cannot be
                    # left, but an older run's cannot either; cheap to check.
                    remove_staging_tap(ipr, alias)
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
        alias = tap_alias(instance_uuid, vif.id, build_id)
        try:
            with IPRoute() as ipr:
                # A plug cut short before its rename leaves only the staging tap.
                remove_staging_tap(ipr, alias)
                if not result.created_tap:
                    return
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
