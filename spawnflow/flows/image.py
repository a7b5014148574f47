"""Step 2, image: the _base cache entry, the instance directory and the root disk.

Creates the instance directory (marked with the build id so a re-run after a
crash knows it is ours) and the root disk (a qcow2 overlay on the cached base,
or a raw copy) grown to the flavor's root_gb. The shared base is never
removed. Revert removes the instance directory if this build made it,
otherwise only the disk this build made.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from taskflow import task

from spawnflow.flows.context import BuildContext

MARKER = ".spawnflow-build"
GiB = 1024 ** 3


def _made_by(instance_dir: str, build_id: str) -> bool:
    try:
        with open(os.path.join(instance_dir, MARKER), encoding="utf-8") as f:
            return f.read().strip() == build_id
    except OSError:
        return False


class CreateImageTask(task.Task):
    step = "image"
    default_provides = "image"

    def __init__(self, ctx: BuildContext):
        super().__init__(name=self.step)
        self.ctx = ctx

    def execute(self) -> dict[str, Any]:
        ctx, image = self.ctx, self.ctx.spec.image
        base = ctx.images.fetch(image.cache_id, image.source, image.sha256, image.disk_format)
        instance_dir = ctx.instance_dir
        created_dir = _made_by(instance_dir, ctx.build_id)
        if not os.path.isdir(instance_dir):
            os.makedirs(instance_dir, mode=0o750)
            with open(os.path.join(instance_dir, MARKER), "w", encoding="utf-8") as f:
                f.write(ctx.build_id)
                f.flush()
                os.fsync(f.fileno())
            created_dir = True
        disk_path = os.path.join(instance_dir, "disk")
        size = ctx.spec.flavor.root_gb * GiB or None
        created_disk = ctx.images.create_instance_disk(base.path, disk_path, image.disk_format,
                                                       size)
        return {"instance_dir": instance_dir, "created_dir": created_dir,
                "disk_path": disk_path, "disk_format": image.disk_format,
                "created_disk": created_disk or created_dir, "base_path": base.path,
                "console_log": os.path.join(instance_dir, "console.log")}

    def revert(self, result: Any = None, **kwargs: Any) -> None:
        # Without a recorded result (failure, or a crash mid-step) the marker
        # file is what tells whether this build made the directory.
        instance_dir = self.ctx.instance_dir
        if _made_by(instance_dir, self.ctx.build_id):
            shutil.rmtree(instance_dir, ignore_errors=False)
        elif isinstance(result, dict) and result.get("created_disk"):
            self.ctx.images.remove_instance_disk(result["disk_path"])
