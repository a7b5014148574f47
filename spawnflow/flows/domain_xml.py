"""Step 5, domain XML: render the domain from typed config objects.

Creates nothing on the host (volumes and secrets were made by the steps
before; tap and filter names are deterministic, filter names carry the build
id). Revert has nothing to remove.
"""

from __future__ import annotations

import datetime
from typing import Any

from spawnflow.flows.base import SpawnTask
from spawnflow.flows.convert import expected_plug, filter_parameters, vif_of
from spawnflow.persistence.step_results import DiskMapping, ImageResult
from spawnflow.virt import guest_config as gc
from spawnflow.virt.vif import VifDriver
from spawnflow.virt.volumes import Connection, VolumeConnector


class DomainXmlStep(SpawnTask):
    step = "domain_xml"
    default_provides = "domain_xml"

    def execute(
        self,
        disk_info: dict[str, DiskMapping],
        image: ImageResult,
        volumes: list[dict[str, Any]],
        volume_secrets: dict[str, str],
    ) -> str:
        ctx, spec = self.ctx, self.ctx.spec
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
            disks=self._disks(disk_info, image, volumes, volume_secrets),
            interfaces=self._interfaces(),
            console_log_path=image["console_log"] if ctx.conf.libvirt.virt_type != "test" else None,
        )
        return config.to_xml()

    def revert(self, *args: Any, **kwargs: Any) -> None:
        pass

    @staticmethod
    def _disks(
        disk_info: dict[str, DiskMapping],
        image: ImageResult,
        volumes: list[dict[str, Any]],
        volume_secrets: dict[str, str],
    ) -> list[gc.GuestDisk]:
        """The root disk, then every connected volume (encrypted with its secret, if any)."""
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
                VolumeConnector.load(connection["driver"]).guest_disk(
                    Connection.from_dict(connection),
                    mapping["dev"],
                    mapping["bus"],
                    encryption=gc.DiskEncryption(secret_uuid=secret) if secret else None,
                )
            )
        return disks

    def _interfaces(self) -> list[gc.GuestInterface]:
        """One interface per spec VIF, on the tap plugging will make, with its filter."""
        ctx, spec = self.ctx, self.ctx.spec
        interfaces = []
        for spec_vif in spec.vifs:
            name = ctx.firewall.filter_for(spec.instance.uuid, spec_vif.mac, ctx.build_id)
            filterref = gc.FilterRef(name, filter_parameters(spec_vif.ips)) if name else None
            interfaces.append(
                VifDriver.load(spec_vif.type).guest_interface(
                    vif_of(spec_vif), expected_plug(spec_vif.id), filterref=filterref
                )
            )
        return interfaces
