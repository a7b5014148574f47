"""Delete step 1, cancel_builds: no spawn build of the instance may still be running.

Every unfinished spawn build of the instance (QUEUED, RUNNING, INTERRUPTED,
REVERTING) is cancelled and rolled back first, and this step waits until
each has ended; the steps after it then never race a build that is still
making things. Creates nothing; revert does nothing (a delete goes forward).
"""

from __future__ import annotations

from typing import Any

from spawnflow.flows.teardown.base import TeardownStep


class CancelBuildsStep(TeardownStep):
    step = "cancel_builds"
    default_provides = "cancel_builds"

    def execute(self) -> dict[str, Any]:
        return {"rolled_back": self.ctx.settle()}
