"""Delete step 6, remove_files: the instance directory and root disk go.

Removed as each build that made them (their markers name it): the whole
directory if a build of this instance made it, else a root disk a build of
it made inside. A directory whose marker names no build of this instance
is left and listed. The shared image cache is never touched here (the host
audit ages its entries). Revert does nothing.
"""

from __future__ import annotations

import os
from typing import Any

from spawnflow.flows.teardown.base import TeardownStep
from spawnflow.virt import instance_files


class RemoveFilesStep(TeardownStep):
    step = "remove_files"
    default_provides = "remove_files"

    def execute(self) -> dict[str, Any]:
        ctx, removals = self.ctx, self.removals()
        path = ctx.instance_dir
        # Newest first: a later build's disk inside the directory an earlier
        # build made goes before that build removes the directory.
        for owner in reversed(ctx.owners):

            def remove(build: str = owner.build_id) -> bool:
                return instance_files.remove(path, build)

            removals.attempt(f"instance files of build {owner.build_id} in {path}", remove)
        if os.path.lexists(path):
            removals.leave(f"instance directory {path} (not made by a build of this instance)")
        return removals.result()
