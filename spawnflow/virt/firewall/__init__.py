"""Instance firewall drivers, loaded as plugins by ``[firewall] driver``.

``nwfilter`` (:mod:`spawnflow.virt.firewall.nwfilter`) defines a libvirt
nwfilter per VIF on top of ``clean-traffic``; ``noop``
(:mod:`spawnflow.virt.firewall.noop`) filters nothing. Both are registered
under the entry point group ``spawnflow.firewall_drivers``;
``FirewallDriver.load(name, host=host)`` loads one (see
:mod:`spawnflow.virt.plugins`).
"""

from __future__ import annotations

from spawnflow.virt.firewall.base import FirewallDriver

__all__ = ["FirewallDriver"]
