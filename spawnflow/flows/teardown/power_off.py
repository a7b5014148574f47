"""Delete step 2, power_off: the guest stops (ACPI shutdown, then destroy).

The guest is asked to power off and given ``[DEFAULT] shutdown_timeout``
seconds (none with ``--force``), then destroyed, as nova does. Only a domain
whose spawnflow metadata names a build of this instance is touched; any
other domain under the instance's uuid is left and listed. Its definition
stays until the last step (``undefine_domain``), so a crash in between
still finds it by its marker. Revert does nothing.
"""

from __future__ import annotations

from typing import Any

from spawnflow.flows.teardown.base import TeardownStep
from spawnflow.virt import domain


class PowerOffStep(TeardownStep):
    step = "power_off"
    default_provides = "power_off"

    def execute(self) -> dict[str, Any]:
        ctx, removals = self.ctx, self.removals()
        uuid = ctx.instance_uuid
        if not domain.exists(ctx.host, uuid):
            return removals.result()
        owner = domain.build_id(ctx.host, uuid)
        if owner not in ctx.owner_ids:
            removals.leave(f"domain {uuid} (its metadata names no build of this instance)")
            return removals.result()
        timeout = 0 if ctx.force else ctx.conf.shutdown_timeout
        if timeout and domain.shutdown(ctx.host, uuid, timeout, ctx.stopping):
            removals.removed.append(f"domain {uuid} powered off (ACPI)")
            return removals.result()
        removals.attempt(f"domain {uuid} destroyed", lambda: domain.destroy(ctx.host, uuid))
        return removals.result()
