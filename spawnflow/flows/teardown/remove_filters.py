"""Delete step 4, remove_filters: the instance's firewall filters are undefined.

One filter per VIF per build, by the name that carries the instance, the
MAC and the build (``firewall.filter_for``); a filter of that name is that
build's. libvirt removed the filter bindings when the guest stopped.
Revert does nothing.
"""

from __future__ import annotations

from typing import Any

from spawnflow.flows.teardown.base import TeardownStep


class RemoveFiltersStep(TeardownStep):
    step = "remove_filters"
    default_provides = "remove_filters"

    def execute(self) -> dict[str, Any]:
        ctx, removals = self.ctx, self.removals()
        firewall = ctx.firewall
        for owner in ctx.owners:
            for port in owner.spec.vifs:
                name = firewall.filter_for(ctx.instance_uuid, port.mac, owner.build_id)
                if name is None:
                    continue

                def undefine(name: str = name) -> bool:
                    if not firewall.exists(name):
                        return False
                    firewall.teardown([name])
                    return True

                removals.attempt(f"filter {name}", undefine)
        return removals.result()
