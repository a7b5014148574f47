"""The ``noop`` firewall driver: no filtering, nothing defined on the host."""

from __future__ import annotations

from spawnflow.virt.firewall.base import FirewallDriver
from spawnflow.virt.host import Host


class NoopFirewall(FirewallDriver):
    """Filters nothing: VIFs get no ``<filterref>`` and there is nothing to undefine."""

    name = "noop"

    def __init__(self, host: Host | None = None):
        # Takes the host like every firewall driver (the loader passes it);
        # needs nothing from it.
        del host

    def filter_for(self, instance_uuid: str, mac: str, build_id: str) -> str | None:
        return None

    def setup(self, instance_uuid: str, macs: list[str], build_id: str) -> list[str]:
        return []

    def teardown(self, names: list[str]) -> None:
        pass

    def exists(self, name: str) -> bool:
        return False
