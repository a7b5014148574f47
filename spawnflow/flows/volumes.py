"""Step 3, volumes: connect every volume through its connector plugin.

Creates whatever the connector does on the host (nothing for local files or
qemu's own iSCSI/RBD clients). Revert disconnects every volume of the spec;
connectors tolerate "not connected", so a revert after a crash is safe.
Connectors get the operator's allow lists (``volume_policy``) and check a
local path again when connecting: the spec check may have run in another
process, before a link was changed.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from spawnflow.flows.base import SpawnTask
from spawnflow.flows.convert import volume_spec
from spawnflow.flows.policy import volume_policy
from spawnflow.virt.volumes import Connection, VolumeConnector


class VolumesStep(SpawnTask):
    step = "volumes"
    default_provides = "volumes"

    def execute(self) -> list[dict[str, Any]]:
        connections = []
        policy = volume_policy(self.ctx.conf)
        for volume in self.ctx.spec.volumes:
            connection = VolumeConnector.load(volume.driver, policy=policy).connect(
                volume_spec(volume)
            )
            connections.append(asdict(connection))
        return connections

    def revert(self, result: Any = None, **kwargs: Any) -> None:
        recorded = {c["volume_id"]: c for c in result} if isinstance(result, list) else {}
        for volume in reversed(self.ctx.spec.volumes):
            connection = recorded.get(volume.id)
            VolumeConnector.load(volume.driver).disconnect(
                volume_spec(volume), Connection.from_dict(connection) if connection else None
            )
