"""Step 10, wait for boot: poll the power state every 0.5 s until RUNNING.

Bounded by [libvirt] boot_timeout (nova polls forever). Creates nothing;
revert has nothing to remove.
"""

from __future__ import annotations

import time
from typing import Any

from spawnflow.exceptions import BootTimeout, DomainError
from spawnflow.flows.base import SpawnTask
from spawnflow.virt import domain

POLL_INTERVAL = 0.5


class WaitForBootStep(SpawnTask):
    step = "wait_for_boot"
    default_provides = "power_state"

    def execute(self) -> str:
        if not self.ctx.spec.power_on:
            return "shutoff"
        deadline = time.monotonic() + self.ctx.conf.libvirt.boot_timeout
        state = "unknown"
        while True:
            self.ctx.events.checkpoint(self.ctx.build_id)
            state = domain.state(self.ctx.host, self.ctx.instance_uuid)
            if state == "gone":
                raise DomainError(f"domain {self.ctx.instance_uuid} vanished while booting")
            if state == "running":
                return state
            if time.monotonic() >= deadline:
                raise BootTimeout(
                    f"domain {self.ctx.instance_uuid} still {state} after "
                    f"boot_timeout={self.ctx.conf.libvirt.boot_timeout}s"
                )
            time.sleep(POLL_INTERVAL)

    def revert(self, *args: Any, **kwargs: Any) -> None:
        pass
