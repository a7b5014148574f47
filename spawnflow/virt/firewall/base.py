"""The firewall driver interface: per-instance filters for a build's VIFs.

A driver defines one filter per VIF for a build, names the filter a VIF's
``<filterref>`` refers to, and undefines a build's filters on revert. Drivers
are plugins (entry point group ``spawnflow.firewall_drivers``) chosen by
``[firewall] driver`` and loaded with ``FirewallDriver.load(name, host=host)``;
each takes the libvirt :class:`~spawnflow.virt.host.Host` it works on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from spawnflow.exceptions import FirewallError
from spawnflow.virt.plugins import Plugin


class FirewallDriver(Plugin, ABC):
    """Filters the traffic of an instance's VIFs; ``name`` is the driver's plugin name."""

    NAMESPACE = "spawnflow.firewall_drivers"
    ERROR = FirewallError
    PLUGIN = "firewall driver"
    SELECTOR = "firewall driver"

    name: str

    @abstractmethod
    def filter_for(self, instance_uuid: str, mac: str, build_id: str) -> str | None:
        """The filter the VIF with ``mac`` refers to in this build, or None for no filter."""

    @abstractmethod
    def setup(self, instance_uuid: str, macs: list[str], build_id: str) -> list[str]:
        """Define this build's filter of every MAC (again after a crash); return their names."""

    @abstractmethod
    def teardown(self, names: list[str]) -> None:
        """Undefine the filters ``names``; one already gone is fine."""

    @abstractmethod
    def exists(self, name: str) -> bool:
        """Whether a filter called ``name`` is defined on the host."""
