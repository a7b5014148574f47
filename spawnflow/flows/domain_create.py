"""Step 8, domain create: defineXML, then start (paused when VIF events are expected).

Creates a persistent domain and, if the guest is powered on, its QEMU process
(and libvirt-managed taps). A domain with this uuid that another build defined
is refused, never adopted. Revert destroys first, then undefines: an undefined
running domain would survive as a transient one. The build id in the domain's
metadata tells revert whether the domain is ours, with or without a result.
"""

from __future__ import annotations

from typing import Any

from spawnflow.exceptions import DomainError
from spawnflow.flows.base import SpawnTask
from spawnflow.persistence.step_results import DomainInfo, VifsResult
from spawnflow.virt import domain


class DomainCreateStep(SpawnTask):
    step = "domain_create"
    default_provides = "domain_info"

    def execute(self, domain_xml: str, vifs: VifsResult) -> DomainInfo:
        ctx = self.ctx
        if (
            domain.exists(ctx.host, ctx.instance_uuid)
            and domain.build_id(ctx.host, ctx.instance_uuid) != ctx.build_id
        ):
            raise DomainError(
                f"a domain with uuid {ctx.instance_uuid} already exists and was "
                "not defined by this build; refusing to touch it"
            )
        domain.define(ctx.host, domain_xml)
        paused = bool(vifs["expected_events"])
        if ctx.spec.power_on:
            domain.start(ctx.host, ctx.instance_uuid, paused=paused)  # a running one is left
        return DomainInfo(uuid=ctx.instance_uuid, started_paused=paused and ctx.spec.power_on)

    def revert(self, *args: Any, **kwargs: Any) -> None:
        ctx = self.ctx
        if domain.build_id(ctx.host, ctx.instance_uuid) != ctx.build_id:
            return  # none, or another build's
        domain.destroy(ctx.host, ctx.instance_uuid)
        domain.undefine(ctx.host, ctx.instance_uuid)
