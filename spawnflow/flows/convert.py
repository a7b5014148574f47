"""From the build spec's types to the host primitives' types, in one place.

The spec (:mod:`spawnflow.flows.spec`) is the input: validated, persisted,
shown to operators. The virt layer has its own, smaller types (a VIF driver
needs no port IPs, a connector no encryption). Every step that hands a spec
item to the virt layer converts it here, so two steps never disagree on the
mapping (a ``secret_uuid`` becoming a connector's ``auth_secret_uuid``, say).
"""

from __future__ import annotations

import ipaddress

from spawnflow.flows import spec
from spawnflow.virt import vif as virt_vif
from spawnflow.virt.volumes import VolumeSpec


def vif_of(port: spec.Vif) -> virt_vif.Vif:
    """The VIF driver's view of a spec port."""
    return virt_vif.Vif(
        id=port.id,
        mac=port.mac,
        type=port.type,
        bridge=port.bridge,
        mtu=port.mtu,
    )


def expected_plug(vif_id: str) -> virt_vif.PlugResult:
    """What plugging will produce: tap names are derived from the port id."""
    return virt_vif.PlugResult(
        vif_id=vif_id, tap=virt_vif.tap_name(vif_id), created_tap=True, created_bridge=False
    )


def filter_parameters(ips: list[str]) -> list[tuple[str, str]]:
    """nwfilter parameters for a port's addresses: IPv4 as ``IP``, IPv6 as ``IPV6``.

    clean-traffic (no-ip-spoofing, no-arp-spoofing) takes ``IP`` as an IPv4
    address: an IPv6 one there makes libvirt fail to start the domain
    (ebtables ``--arp-ip-src 2001:db8::5/32``). Like nova, only IPv4 addresses
    go into ``IP``; IPv6 ones are passed as libvirt's reserved ``IPV6``.
    """
    return [("IP" if ipaddress.ip_address(ip).version == 4 else "IPV6", ip) for ip in ips]


def volume_spec(volume: spec.Volume) -> VolumeSpec:
    """The volume connector's view of a spec volume (its libvirt auth secret, no encryption)."""
    return VolumeSpec(
        id=volume.id,
        driver=volume.driver,
        device=volume.device,
        path=volume.path,
        portal=volume.portal,
        iqn=volume.iqn,
        lun=volume.lun,
        auth_username=volume.auth_username,
        auth_secret_uuid=volume.secret_uuid,
        pool=volume.pool,
        image=volume.image,
        hosts=list(volume.hosts),
    )
