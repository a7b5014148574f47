"""``BuildHistory``: one build's record from the log, plus its diagnosis in words.

The record (``model.BuildRecord``) is plain data; ``diagnosis`` reads it. This
class joins the two so that a caller holding a build can ask
``build.diagnose(...)``; it sits above both, so neither imports the other.
"""

from __future__ import annotations

from spawnflow.history.diagnosis import diagnose
from spawnflow.history.model import BuildRecord, Diagnosis
from spawnflow.persistence.log_wait import LogWait


class BuildHistory(BuildRecord):
    """Steps, lifecycle, external events, waits and interruptions of one build."""

    def diagnose(
        self,
        *,
        vif_plugging_timeout: float | None = None,
        vif_plugging_is_fatal: bool = True,
        recovery_policy: str | None = None,
        resume_window: float | None = None,
        lease_seconds: float | None = None,
        now: float | None = None,
        log_wait: LogWait | None = None,
        flow_version: str | None = None,
        on_flow_change: str = "rollback",
    ) -> Diagnosis:
        """In words: what this build waits for, or why it failed; see ``diagnosis``."""
        return diagnose(
            self,
            vif_plugging_timeout=vif_plugging_timeout,
            vif_plugging_is_fatal=vif_plugging_is_fatal,
            recovery_policy=recovery_policy,
            resume_window=resume_window,
            lease_seconds=lease_seconds,
            now=now,
            log_wait=log_wait,
            flow_version=flow_version,
            on_flow_change=on_flow_change,
        )
