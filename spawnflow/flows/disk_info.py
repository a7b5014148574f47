"""Step 1, disk info: the bus/device mapping of the root disk and volumes.

Creates nothing; revert has nothing to remove.
"""

from __future__ import annotations

from typing import Any

from spawnflow.flows.base import SpawnTask
from spawnflow.virt import blockinfo


class DiskInfoStep(SpawnTask):
    step = "disk_info"
    default_provides = "disk_info"

    def execute(self) -> dict[str, dict[str, str]]:
        volumes = [(v.id, v.device) for v in self.ctx.spec.volumes]
        return blockinfo.disk_mapping("virtio", volumes)

    def revert(self, *args: Any, **kwargs: Any) -> None:
        pass
