"""VIF plugging: make the host side of a guest NIC exist, os-vif style.

Drivers sit behind one plugin boundary, :class:`VifDriver` (entry point
group ``spawnflow.vif_drivers``), chosen by the VIF's ``type`` and loaded with
``VifDriver.load(type)``:

``bridge`` (:mod:`spawnflow.virt.vif.bridge`)
    The guest's tap on a Linux bridge; libvirt creates and removes the tap,
    the bridge is shared and never removed.
``tap`` (:mod:`spawnflow.virt.vif.tap`)
    A persistent tap we create and tag with the build, that libvirt only opens.

All host changes go through netlink (:mod:`spawnflow.virt.vif.netlink`).
This package imports only :mod:`~spawnflow.virt.vif.base`, so naming a tap
does not load pyroute2.
"""

from __future__ import annotations

from spawnflow.virt.vif.base import PlugResult, Vif, VifDriver, tap_alias, tap_name

__all__ = ["PlugResult", "Vif", "VifDriver", "tap_alias", "tap_name"]
