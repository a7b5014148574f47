"""What every VIF driver shares: the port to plug, the plug result, tap names, the driver ABC.

No netlink here (that is :mod:`spawnflow.virt.vif.netlink`), so the build
spec can check tap names without loading pyroute2.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from spawnflow.exceptions import VifError
from spawnflow.persistence.step_results import PlugRecord
from spawnflow.virt.guest_config import FilterRef, GuestInterface
from spawnflow.virt.plugins import Plugin

# Linux interface names are at most IFNAMSIZ - 1 = 15 bytes.
IFNAME_MAX = 15
# Like nova's NIC_NAME_LEN: 'tap' + 11 characters of the port uuid = 14.
_TAP_PREFIX = "tap"
_TAP_ID_CHARS = 11

#: First field of the ``ifalias`` the tap driver tags its taps with.
ALIAS_PREFIX = "spawnflow"


@dataclass(frozen=True)
class Vif:
    """One port to plug, as a VIF driver needs it (made from the spec's by ``flows.convert``)."""

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
    def from_dict(cls, data: PlugRecord) -> PlugResult:
        """Rebuild a result read back from the task store (``to_dict`` form)."""
        return cls(
            vif_id=data["vif_id"],
            tap=data["tap"],
            created_tap=bool(data["created_tap"]),
            created_bridge=bool(data["created_bridge"]),
        )

    def to_dict(self) -> PlugRecord:
        """The form recorded in the ``vifs`` step's result (``dataclasses.asdict``'s)."""
        return PlugRecord(
            vif_id=self.vif_id,
            tap=self.tap,
            created_tap=self.created_tap,
            created_bridge=self.created_bridge,
        )


def tap_name(vif_id: str) -> str:
    """Name of the guest's tap device: ``'tap' + vif_id[:11]``, as nova names it."""
    return _TAP_PREFIX + vif_id[:_TAP_ID_CHARS]


def tap_alias(instance_uuid: str, vif_id: str, build_id: str) -> str:
    """The ``ifalias`` that marks a tap as created by this build for this port."""
    return f"{ALIAS_PREFIX}:{instance_uuid}:{vif_id}:{build_id}"


def check_ifname(name: str, what: str) -> None:
    """Refuse a device name Linux would refuse (empty, or over IFNAMSIZ - 1 bytes)."""
    if not name or len(name.encode()) > IFNAME_MAX:
        raise VifError(f"{what} name {name!r} must be 1 to {IFNAME_MAX} bytes long")


def guest_interface_of(vif: Vif, **fields: Any) -> GuestInterface:
    """A :class:`GuestInterface` made of ``fields``; a bad field raises VifError naming the port.

    GuestInterface validates its fields with ValueError; callers of a VIF
    driver expect VifError.
    """
    try:
        return GuestInterface(**fields)
    except ValueError as exc:
        raise VifError(f"vif {vif.id}: cannot describe the guest interface: {exc}") from exc


class VifDriver(Plugin, ABC):
    """Host-side plumbing for one kind of VIF, chosen by the VIF's ``type``."""

    NAMESPACE = "spawnflow.vif_drivers"
    ERROR = VifError
    PLUGIN = "vif driver"
    SELECTOR = "vif type"

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
