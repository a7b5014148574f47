"""Step 9, resume: wait for the expected network-vif-plugged events, then resume.

The deadline is computed from the time persisted by the VIF step, so a
resumed build does not restart the clock. A 'failed' event or the deadline
passing fails the build when vif_plugging_is_fatal, else it goes on. Only a
paused domain is resumed. Creates nothing; revert has nothing to remove (the
domain step destroys the domain).
"""

from __future__ import annotations

import logging
from typing import Any

from spawnflow.exceptions import VifPlugFailed, VifPlugTimeout
from spawnflow.flows.base import SpawnTask
from spawnflow.persistence.step_results import VIF_PLUGGED, DomainInfo, VifsResult
from spawnflow.virt import domain

LOG = logging.getLogger(__name__)


class ResumeStep(SpawnTask):
    step = "resume"
    default_provides = "events_received"

    def execute(self, vifs: VifsResult, domain_info: DomainInfo) -> dict[str, str]:
        ctx, expected = self.ctx, vifs["expected_events"]
        received: dict[str, str] = {}
        if expected:
            deadline = vifs["waiting_since"] + ctx.conf.network.vif_plugging_timeout
            received = ctx.events.wait(ctx.build_id, expected, deadline)
            self._judge(expected, received)
        if domain_info["started_paused"]:
            self._resume()
        return received

    def revert(self, *args: Any, **kwargs: Any) -> None:
        pass

    def _judge(self, expected: list[str], received: dict[str, str]) -> None:
        fatal = self.ctx.conf.network.vif_plugging_is_fatal
        failed = [tag for tag in expected if received.get(tag) == "failed"]
        missing = [tag for tag in expected if tag not in received]
        if failed:
            message = f"{VIF_PLUGGED} reported failed for port(s) {', '.join(failed)}"
            if fatal:
                raise VifPlugFailed(message)
            LOG.warning("%s; continuing (vif_plugging_is_fatal=False)", message)
        if missing:
            message = f"timed out waiting for {VIF_PLUGGED} for port(s) {', '.join(missing)}"
            if fatal:
                raise VifPlugTimeout(message)
            LOG.warning("%s; continuing (vif_plugging_is_fatal=False)", message)

    def _resume(self) -> None:
        domain.resume(self.ctx.host, self.ctx.instance_uuid)  # raises if it vanished
