"""Step 6, VIFs: decide which network-vif-plugged events to wait for, then plug.

Events are expected (as nova does) for ports not yet active, when the host can
start a domain paused, the guest is powered on and vif_plugging_timeout > 0.
Delivered events are persisted by the agent whenever they arrive, so one that
comes before the wait begins is not lost. Creates a tap per 'tap' VIF, tagged
with this build's id (and a missing bridge, which is shared and never removed).
Revert unplugs every VIF as this build: the drivers remove only the taps this
build made (tap VIFs) or left-over taps nothing uses (bridge VIFs), so it is
safe with or without a recorded result and after a later build of the same
instance took over the port.
"""

from __future__ import annotations

import time
from typing import Any

from spawnflow.flows.base import SpawnTask
from spawnflow.flows.context import BuildContext
from spawnflow.flows.convert import expected_plug, vif_of
from spawnflow.persistence.step_results import VifsResult
from spawnflow.virt.vif import PlugResult, VifDriver


def expected_events(ctx: BuildContext) -> list[str]:
    """Ports whose ``network-vif-plugged`` the ``resume`` step will wait for (see above)."""
    if not (
        ctx.host.can_start_paused
        and ctx.spec.power_on
        and ctx.conf.network.vif_plugging_timeout > 0
    ):
        return []
    return [vif.id for vif in ctx.spec.vifs if not vif.active]


class VifsStep(SpawnTask):
    step = "vifs"
    default_provides = "vifs"

    def execute(self) -> VifsResult:
        expected = expected_events(self.ctx)
        waiting_since = time.time()
        plugged = []
        for spec_vif in self.ctx.spec.vifs:
            self.ctx.guard()  # each tap is a side effect of its own
            result = VifDriver.load(spec_vif.type).plug(
                vif_of(spec_vif), self.ctx.instance_uuid, self.ctx.build_id
            )
            plugged.append(result.to_dict())
        return VifsResult(expected_events=expected, waiting_since=waiting_since, plugged=plugged)

    def revert(self, result: Any = None, **kwargs: Any) -> None:
        # ``result`` is this step's VifsResult, or None or a Failure when
        # execute did not return one.
        recorded = _recorded(result) if isinstance(result, dict) else {}
        for spec_vif in reversed(self.ctx.spec.vifs):
            # Without a recorded result (crash mid-step) the driver's own
            # ownership check (the tap's alias) decides what is ours.
            plugged = recorded.get(spec_vif.id) or expected_plug(spec_vif.id)
            self.ctx.guard()
            VifDriver.load(spec_vif.type).unplug(
                vif_of(spec_vif), plugged, self.ctx.instance_uuid, self.ctx.build_id
            )


def _recorded(result: dict[str, Any]) -> dict[str, PlugResult]:
    """The plugs a stored result records, by VIF id.

    A result stored by an older flow version may lack keys added since: such a
    record is left out, and the driver's ownership check (the tap's alias)
    decides for its VIF, as after a crash mid-step.
    """
    recorded: dict[str, PlugResult] = {}
    for record in result.get("plugged") or []:
        try:
            recorded[record["vif_id"]] = PlugResult.from_dict(record)
        except (KeyError, TypeError):
            continue
    return recorded
