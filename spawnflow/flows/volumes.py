"""Step 3, volumes: connect every volume through its connector plugin.

Creates whatever the connector does on the host (nothing for local files or
qemu's own iSCSI/RBD clients). Revert disconnects every volume of the spec;
connectors tolerate "not connected", so a revert after a crash is safe.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from taskflow import task

from spawnflow.flows.context import BuildContext
from spawnflow.flows.spec import Volume
from spawnflow.virt.volumes import Connection, VolumeSpec, get_connector


def volume_spec(volume: Volume) -> VolumeSpec:
    return VolumeSpec(id=volume.id, driver=volume.driver, device=volume.device,
                      path=volume.path, portal=volume.portal, iqn=volume.iqn, lun=volume.lun,
                      auth_username=volume.auth_username, auth_secret_uuid=volume.secret_uuid,
                      pool=volume.pool, image=volume.image, hosts=list(volume.hosts))


class ConnectVolumesTask(task.Task):
    step = "volumes"
    default_provides = "volumes"

    def __init__(self, ctx: BuildContext):
        super().__init__(name=self.step)
        self.ctx = ctx

    def execute(self) -> list[dict[str, Any]]:
        connections = []
        for volume in self.ctx.spec.volumes:
            connection = get_connector(volume.driver).connect(volume_spec(volume))
            connections.append(asdict(connection))
        return connections

    def revert(self, result: Any = None, **kwargs: Any) -> None:
        recorded = {c["volume_id"]: c for c in result} if isinstance(result, list) else {}
        for volume in reversed(self.ctx.spec.volumes):
            connection = recorded.get(volume.id)
            get_connector(volume.driver).disconnect(
                volume_spec(volume), Connection.from_dict(connection) if connection else None)
