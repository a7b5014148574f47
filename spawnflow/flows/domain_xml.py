"""Step 5, domain XML: render the domain from typed config objects.

Creates nothing on the host (volumes and secrets were made by the steps
before; tap and filter names are deterministic, filter names carry the build
id). Revert has nothing to remove.
"""

from __future__ import annotations

import datetime
import ipaddress
from typing import Any

from taskflow import task

from spawnflow.flows.context import BuildContext
from spawnflow.virt import guest_config as gc
from spawnflow.virt.vif import PlugResult, Vif, get_driver, tap_name
from spawnflow.virt.volumes import Connection, get_connector


def vif_of(spec_vif: Any) -> Vif:
    return Vif(
        id=spec_vif.id,
        mac=spec_vif.mac,
        type=spec_vif.type,
        bridge=spec_vif.bridge,
        mtu=spec_vif.mtu,
    )


def filter_parameters(ips: list[str]) -> list[tuple[str, str]]:
    """nwfilter parameters for a port's addresses: IPv4 as ``IP``, IPv6 as ``IPV6``.

    clean-traffic (no-ip-spoofing, no-arp-spoofing) takes ``IP`` as an IPv4
    address: an IPv6 one there makes libvirt fail to start the domain
    (ebtables ``--arp-ip-src 2001:db8::5/32``). Like nova, only IPv4 addresses
    go into ``IP``; IPv6 ones are passed as libvirt's reserved ``IPV6``.
    """
    return [("IP" if ipaddress.ip_address(ip).version == 4 else "IPV6", ip) for ip in ips]


def expected_plug(vif_id: str) -> PlugResult:
    """What plugging will produce: tap names are derived from the port id."""
    return PlugResult(vif_id=vif_id, tap=tap_name(vif_id), created_tap=True, created_bridge=False)


class BuildDomainXmlTask(task.Task):
    step = "domain_xml"
    default_provides = "domain_xml"

    def __init__(self, ctx: BuildContext):
        super().__init__(name=self.step)
        self.ctx = ctx

    def execute(
        self,
        disk_info: dict[str, dict[str, str]],
        image: dict[str, Any],
        volumes: list[dict[str, Any]],
        volume_secrets: dict[str, str],
    ) -> str:
        ctx, spec = self.ctx, self.ctx.spec
        root = disk_info["root"]
        disks = [
            gc.GuestDisk(
                target_dev=root["dev"],
                target_bus=root["bus"],
                source_type="file",
                driver_format=image["disk_format"],
                source_path=image["disk_path"],
            )
        ]
        for connection in volumes:
            mapping = disk_info[connection["volume_id"]]
            secret = volume_secrets.get(connection["volume_id"])
            disks.append(
                get_connector(connection["driver"]).guest_disk(
                    Connection.from_dict(connection),
                    mapping["dev"],
                    mapping["bus"],
                    encryption=gc.DiskEncryption(secret_uuid=secret) if secret else None,
                )
            )
        interfaces = []
        for spec_vif in spec.vifs:
            name = ctx.firewall.filter_for(spec.instance.uuid, spec_vif.mac, ctx.build_id)
            filterref = gc.FilterRef(name, filter_parameters(spec_vif.ips)) if name else None
            interfaces.append(
                get_driver(spec_vif.type).guest_interface(
                    vif_of(spec_vif), expected_plug(spec_vif.id), filterref=filterref
                )
            )
        config = gc.GuestConfig(
            virt_type=ctx.conf.libvirt.virt_type,
            uuid=spec.instance.uuid,
            name=spec.domain_name,
            memory_mb=spec.flavor.memory_mb,
            vcpus=spec.flavor.vcpus,
            metadata=gc.GuestMetadata(
                instance_name=spec.instance.name,
                build_id=ctx.build_id,
                flavor=spec.flavor.model_dump(),
                created_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            ),
            disks=disks,
            interfaces=interfaces,
            console_log_path=image["console_log"] if ctx.conf.libvirt.virt_type != "test" else None,
        )
        return config.to_xml()

    def revert(self, *args: Any, **kwargs: Any) -> None:
        pass
