"""Delete step 3, unplug_vifs: every VIF of every build of the instance is unplugged.

Each VIF is unplugged as the build that plugged it: the drivers remove only
a tap carrying that build's alias (tap VIFs) or one nothing uses any more
(bridge VIFs), exactly as a spawn's revert does, so a tap of another
instance or a foreign one is never removed. Shared bridges stay. Revert
does nothing.
"""

from __future__ import annotations

from typing import Any

from spawnflow.flows.convert import expected_plug, vif_of
from spawnflow.flows.teardown.base import TeardownStep
from spawnflow.virt.vif import VifDriver, netlink, tap_name


class UnplugVifsStep(TeardownStep):
    step = "unplug_vifs"
    default_provides = "unplug_vifs"

    def execute(self) -> dict[str, Any]:
        ctx, removals = self.ctx, self.removals()
        for owner in ctx.owners:
            for port in owner.spec.vifs:
                driver = VifDriver.load(port.type)

                def unplug(
                    port: Any = port, driver: VifDriver = driver, build: str = owner.build_id
                ) -> bool:
                    tap = tap_name(port.id)
                    there = netlink.tap_exists(tap)
                    driver.unplug(vif_of(port), expected_plug(port.id), ctx.instance_uuid, build)
                    return there and not netlink.tap_exists(tap)

                removals.attempt(
                    f"tap {tap_name(port.id)} (vif {port.id}, build {owner.build_id})", unplug
                )
        return removals.result()
