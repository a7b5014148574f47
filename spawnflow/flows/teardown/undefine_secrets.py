"""Delete step 7, undefine_secrets: the libvirt secrets of encrypted volumes go.

One secret per encrypted volume per build, found by its usage id (which
names the instance, the volume and the build): a secret of that usage is
that build's. Revert does nothing.
"""

from __future__ import annotations

from typing import Any

from spawnflow.flows.teardown.base import TeardownStep
from spawnflow.virt import secrets


class UndefineSecretsStep(TeardownStep):
    step = "undefine_secrets"
    default_provides = "undefine_secrets"

    def execute(self) -> dict[str, Any]:
        ctx, removals = self.ctx, self.removals()
        for owner in ctx.owners:
            for volume in owner.spec.volumes:
                if volume.encryption is None:
                    continue
                usage = secrets.usage_id(ctx.instance_uuid, volume.id, owner.build_id)

                def undefine(usage: str = usage) -> bool:
                    return secrets.undefine(ctx.host, usage)

                removals.attempt(f"secret {usage}", undefine)
        return removals.result()
