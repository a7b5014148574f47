"""VIF plugging: make the host side of a guest NIC exist, os-vif style.

Two drivers sit behind one plugin boundary (entry point group
``spawnflow.vif_drivers``), chosen by the VIF's ``type``:

``bridge`` (:class:`BridgeVifDriver`)
    Ensures the Linux bridge exists and is up. The tap itself is created by
    libvirt when the domain starts (``<interface type='bridge'>``); we give it a
    fixed name, :func:`tap_name`, so a revert can find it. libvirt owns that tap
    and removes it when the domain stops; unplug only removes one left over by
    a dead domain, i.e. one that no process holds open (a tap QEMU is attached
    to belongs to a running domain, possibly another build's of the same
    instance, and is never ours to delete). The bridge is never deleted, even
    when this driver created it: like os-vif's linux_bridge plugin we treat
    bridges as shared by every instance on the host, and deleting one could cut
    off instances that started using it after us.

``tap`` (:class:`TapVifDriver`)
    Creates a persistent tap that libvirt opens but does not manage
    (``<interface type='ethernet'>`` with ``<target managed='no'/>``). The tap
    is tagged with an ``ifalias`` naming the instance, the port and the build
    (:func:`tap_alias`), so a re-run of the plug step after a crash recognises
    the tap it made before the result was recorded, never adopts a device that
    someone else made, and a revert never removes the tap of another build of
    the same instance (the tap name only names the port).

All host changes go through netlink (pyroute2), with one ``IPRoute`` socket per
call rather than a global one: sockets are cheap, and a shared one would need
locking across the engine's worker threads.
"""

from __future__ import annotations

import errno
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from stevedore.driver import DriverManager
from stevedore.exception import NoMatches

from spawnflow.exceptions import VifError
from spawnflow.virt.guest_config import FilterRef, GuestInterface

LOG = logging.getLogger(__name__)

VIF_DRIVER_NAMESPACE = "spawnflow.vif_drivers"

# Linux interface names are at most IFNAMSIZ - 1 = 15 bytes.
IFNAME_MAX = 15
# Like nova's NIC_NAME_LEN: 'tap' + 11 characters of the port uuid = 14.
_TAP_PREFIX = "tap"
_TAP_ID_CHARS = 11

_ALIAS_PREFIX = "spawnflow"
_IFF_UP = 0x1


@dataclass(frozen=True)
class Vif:
    """One port to plug, as the build spec describes it."""

    id: str
    mac: str
    type: str
    bridge: str | None = None
    mtu: int | None = None


@dataclass
class PlugResult:
    """What a plug did; recorded in the task result, so JSON-serialisable."""

    vif_id: str
    tap: str
    created_tap: bool
    created_bridge: bool

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlugResult:
        """Rebuild a result read back from the task store (``asdict`` form)."""
        return cls(
            vif_id=data["vif_id"],
            tap=data["tap"],
            created_tap=bool(data["created_tap"]),
            created_bridge=bool(data["created_bridge"]),
        )


def tap_name(vif_id: str) -> str:
    """Name of the guest's tap device: ``'tap' + vif_id[:11]``, as nova names it."""
    return _TAP_PREFIX + vif_id[:_TAP_ID_CHARS]


def tap_alias(instance_uuid: str, vif_id: str, build_id: str) -> str:
    """The ``ifalias`` that marks a tap as created by this build for this port."""
    return f"{_ALIAS_PREFIX}:{instance_uuid}:{vif_id}:{build_id}"


def _check_ifname(name: str, what: str) -> None:
    if not name or len(name.encode()) > IFNAME_MAX:
        raise VifError(f"{what} name {name!r} must be 1 to {IFNAME_MAX} bytes long")


def _get_link(ipr: IPRoute, name: str) -> Any | None:
    """The link message of device ``name``, or None if there is none."""
    indexes = ipr.link_lookup(ifname=name)
    if not indexes:
        return None
    try:
        return ipr.get_links(indexes[0])[0]
    except NetlinkError as exc:
        # Removed between the lookup and the query: same as never there.
        if exc.code == errno.ENODEV:
            return None
        raise


def _link_kind(link: Any) -> str | None:
    info = link.get("IFLA_LINKINFO")
    return info.get("IFLA_INFO_KIND") if info else None


def _tap_in_use(link: Any) -> bool:
    """True if some process holds the tap open (QEMU of a running domain).

    The tun driver turns the carrier on when a file descriptor attaches to the
    device and off when the last one detaches, whatever the admin state.
    """
    return bool(link.get("IFLA_CARRIER"))


def _delete_link(ipr: IPRoute, index: int) -> None:
    """Delete a link, treating "already gone" as success."""
    try:
        ipr.link("del", index=index)
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            raise


def _interface(vif: Vif, **fields: Any) -> GuestInterface:
    # GuestInterface validates its fields with ValueError; callers of a VIF
    # driver expect VifError naming the port.
    try:
        return GuestInterface(**fields)
    except ValueError as exc:
        raise VifError(f"vif {vif.id}: cannot describe the guest interface: {exc}") from exc


def tap_exists(name: str) -> bool:
    """True if a network device called ``name`` exists (any kind)."""
    try:
        with IPRoute() as ipr:
            return bool(ipr.link_lookup(ifname=name))
    except (NetlinkError, OSError) as exc:
        raise VifError(f"cannot look up device {name!r}: {exc}") from exc


class VifDriver(ABC):
    """Host-side plumbing for one kind of VIF."""

    @abstractmethod
    def plug(self, vif: Vif, instance_uuid: str, build_id: str) -> PlugResult:
        """Make the host side exist for build ``build_id``; safe to call again after a crash."""

    @abstractmethod
    def unplug(self, vif: Vif, result: PlugResult, instance_uuid: str, build_id: str) -> None:
        """Remove what ``plug`` of build ``build_id`` created (per ``result``).

        Already gone is fine; anything another build (of this or another
        instance) uses is left alone.
        """

    @abstractmethod
    def guest_interface(
        self, vif: Vif, result: PlugResult, filterref: FilterRef | None = None
    ) -> GuestInterface:
        """The domain ``<interface>`` that uses what ``plug`` set up."""


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
        _check_ifname(vif.bridge, f"vif {vif.id}: bridge")
        tap = tap_name(vif.id)
        try:
            with IPRoute() as ipr:
                created = self._ensure_bridge(ipr, vif)
        except (NetlinkError, OSError) as exc:
            raise VifError(f"vif {vif.id}: cannot set up bridge {vif.bridge!r}: {exc}") from exc
        # After a crash between creating the bridge and recording the result the
        # re-run sees an existing bridge and reports created_bridge=False. That
        # is harmless: created_bridge is informational, bridges are never removed.
        return PlugResult(vif_id=vif.id, tap=tap, created_tap=False, created_bridge=created)

    @staticmethod
    def _ensure_bridge(ipr: IPRoute, vif: Vif) -> bool:
        """Make sure the bridge exists and is up; True if we created it."""
        name = vif.bridge
        link = _get_link(ipr, name)
        created = False
        if link is None:
            try:
                ipr.link("add", ifname=name, kind="bridge")
                created = True
            except NetlinkError as exc:
                # Another build created it between lookup and add: use theirs.
                if exc.code != errno.EEXIST:
                    raise
            link = _get_link(ipr, name)
            if link is None:
                raise VifError(f"vif {vif.id}: bridge {name!r} vanished right after creation")
        kind = _link_kind(link)
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
        if not link["flags"] & _IFF_UP:
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
                link = _get_link(ipr, result.tap)
                if link is None:
                    return
                if _link_kind(link) != "tun":
                    LOG.warning(
                        "vif %s: %s is not a tap device; not removing it", vif.id, result.tap
                    )
                    return
                if _tap_in_use(link):
                    LOG.info(
                        "vif %s: tap %s is in use by a running domain; libvirt owns it, "
                        "not removing it",
                        vif.id,
                        result.tap,
                    )
                    return
                if (link.get("IFLA_IFALIAS") or "").startswith(_ALIAS_PREFIX + ":"):
                    # Made by the tap driver for some build, not by libvirt.
                    LOG.warning(
                        "vif %s: %s is a tap of a 'tap' VIF; not removing it", vif.id, result.tap
                    )
                    return
                _delete_link(ipr, link["index"])
                LOG.info("vif %s: removed left-over tap %s", vif.id, result.tap)
        except (NetlinkError, OSError) as exc:
            raise VifError(f"vif {vif.id}: cannot remove tap {result.tap!r}: {exc}") from exc

    def guest_interface(
        self, vif: Vif, result: PlugResult, filterref: FilterRef | None = None
    ) -> GuestInterface:
        return _interface(
            vif,
            kind="bridge",
            mac=vif.mac,
            bridge=vif.bridge,
            target_dev=result.tap,
            mtu=vif.mtu,
            filterref=filterref,
        )


class TapVifDriver(VifDriver):
    """A persistent tap we create; libvirt only opens it (``managed='no'``).

    The tap is single-queue, without packet info (IFF_NO_PI), which is what
    libvirt asks for when it opens it; a multi-queue guest NIC would need a
    multi-queue tap, which this driver does not create.
    """

    def plug(self, vif: Vif, instance_uuid: str, build_id: str) -> PlugResult:
        tap = tap_name(vif.id)
        _check_ifname(tap, f"vif {vif.id}: tap")
        alias = tap_alias(instance_uuid, vif.id, build_id)
        try:
            with IPRoute() as ipr:
                link = _get_link(ipr, tap)
                if link is None:
                    # TUNSETIFF on an existing persistent tap attaches to it
                    # instead of failing, hence the lookup above rather than
                    # relying on EEXIST.
                    ipr.link("add", ifname=tap, kind="tuntap", mode="tap", ifr={"no_pi": 1})
                    link = _get_link(ipr, tap)
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
        if _link_kind(link) != "tun":
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
                link = _get_link(ipr, result.tap)
                if link is None:
                    return
                if _link_kind(link) != "tun" or link.get("IFLA_IFALIAS") != alias:
                    # Ours was removed and someone else (another build of this
                    # instance, say) made a device with the same name since:
                    # not ours to delete.
                    LOG.warning(
                        "vif %s: %s does not carry this build's alias; not removing it",
                        vif.id,
                        result.tap,
                    )
                    return
                _delete_link(ipr, link["index"])
                LOG.info("vif %s: removed tap %s", vif.id, result.tap)
        except (NetlinkError, OSError) as exc:
            raise VifError(f"vif {vif.id}: cannot remove tap {result.tap!r}: {exc}") from exc

    def guest_interface(
        self, vif: Vif, result: PlugResult, filterref: FilterRef | None = None
    ) -> GuestInterface:
        return _interface(
            vif,
            kind="ethernet",
            mac=vif.mac,
            target_dev=result.tap,
            managed_tap=False,
            mtu=vif.mtu,
            filterref=filterref,
        )


def get_driver(vif_type: str) -> VifDriver:
    """The driver for ``vif_type``, loaded from the ``spawnflow.vif_drivers`` plugins."""

    def _load_failed(_manager: Any, entry_point: Any, exc: Exception) -> None:
        # stevedore would log and skip a plugin that fails to import, and we
        # would then report "unknown type", hiding the real cause.
        raise VifError(f"vif driver plugin {entry_point.name!r} failed to load: {exc}") from exc

    try:
        manager = DriverManager(
            namespace=VIF_DRIVER_NAMESPACE,
            name=vif_type,
            invoke_on_load=True,
            on_load_failure_callback=_load_failed,
        )
    except NoMatches as exc:
        raise VifError(
            f"unknown vif type {vif_type!r}: no {VIF_DRIVER_NAMESPACE} plugin of that name"
        ) from exc
    return manager.driver
