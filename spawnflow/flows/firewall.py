"""Step 7, firewall: per-instance nwfilter filters (or nothing with the noop driver).

Creates one filter per VIF, named after the instance uuid, the MAC and the
build id. Revert undefines this build's filters only; the names are
deterministic, so it works without a recorded result, and never touches the
filters a later build of the same instance defined (and its domain uses).
"""

from __future__ import annotations

from typing import Any

from spawnflow.flows.base import SpawnTask


class FirewallStep(SpawnTask):
    step = "firewall"
    default_provides = "filters"

    def execute(self) -> list[str]:
        return self.ctx.firewall.setup(
            self.ctx.instance_uuid, [vif.mac for vif in self.ctx.spec.vifs], self.ctx.build_id
        )

    def revert(self, *args: Any, **kwargs: Any) -> None:
        names = [
            self.ctx.firewall.filter_for(self.ctx.instance_uuid, vif.mac, self.ctx.build_id)
            for vif in self.ctx.spec.vifs
        ]
        self.ctx.firewall.teardown([n for n in names if n])
