"""Delete step 8, undefine_domain: the domain's definition goes, last.

Last, as in nova: until here a crash finds the domain, with its metadata
naming the build, and the steps before can be re-run against it. Only a
domain whose metadata names a build of this instance is undefined (it is
destroyed first if something started it again). Revert does nothing.
"""

from __future__ import annotations

from typing import Any

from spawnflow.flows.teardown.base import TeardownStep
from spawnflow.virt import domain


class UndefineDomainStep(TeardownStep):
    step = "undefine_domain"
    default_provides = "undefine_domain"

    def execute(self) -> dict[str, Any]:
        ctx, removals = self.ctx, self.removals()
        uuid = ctx.instance_uuid
        if not domain.exists(ctx.host, uuid):
            return removals.result()
        if domain.build_id(ctx.host, uuid) not in ctx.owner_ids:
            removals.leave(f"domain {uuid} (its metadata names no build of this instance)")
            return removals.result()

        def undefine() -> bool:
            domain.destroy(ctx.host, uuid)
            return domain.undefine(ctx.host, uuid)

        removals.attempt(f"domain {uuid}", undefine)
        return removals.result()
