"""Step 1, disk info: the bus/device mapping of the root disk and volumes.

Creates nothing; revert has nothing to remove.
"""

from __future__ import annotations

from taskflow import task

from spawnflow.flows.context import BuildContext
from spawnflow.virt import blockinfo


class DiskInfoTask(task.Task):
    step = "disk_info"
    default_provides = "disk_info"

    def __init__(self, ctx: BuildContext):
        super().__init__(name=self.step)
        self.ctx = ctx

    def execute(self) -> dict[str, dict[str, str]]:
        volumes = [(v.id, v.device) for v in self.ctx.spec.volumes]
        return blockinfo.disk_mapping("virtio", volumes)

    def revert(self, *args, **kwargs) -> None:
        pass
