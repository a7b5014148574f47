"""What an agent start does with a build it finds unfinished: resume or roll back.

    [recovery] policy = resume | rollback | auto

auto resumes builds younger than resume_window and rolls back older ones.
Whatever the policy, a build rolls back when it was already rolling back,
when the VIF event deadline it was waiting for has passed (and is fatal), or
when the interrupted step declares itself not resumable. The decision and its
reason are recorded with the build's INTERRUPTED -> RUNNING/REVERTING event.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from oslo_config import cfg
from taskflow import states as tf_states
from taskflow.persistence import models

from spawnflow.flows.spawn import TASKS

RESUME = "resume"
ROLLBACK = "rollback"
_NOT_RESUMABLE = frozenset(cls.step for cls in TASKS if not getattr(cls, "resumable", True))


@dataclass(frozen=True)
class Decision:
    action: str  # RESUME | ROLLBACK
    reason: str


def _atoms(flow_detail: models.FlowDetail) -> dict[str, models.AtomDetail]:
    return {ad.name: ad for ad in flow_detail}


def _event_deadline_passed(conf: cfg.ConfigOpts, atoms: dict[str, Any], now: float) -> str | None:
    vifs, resume = atoms.get("vifs"), atoms.get("resume")
    if vifs is None or vifs.state != tf_states.SUCCESS or not isinstance(vifs.results, dict):
        return None
    if resume is not None and resume.state == tf_states.SUCCESS:
        return None
    expected = vifs.results.get("expected_events") or []
    deadline = vifs.results.get("waiting_since", now) + conf.network.vif_plugging_timeout
    if expected and now > deadline and conf.network.vif_plugging_is_fatal:
        return (
            f"the network-vif-plugged deadline passed "
            f"{now - deadline:.0f}s ago (vif_plugging_is_fatal)"
        )
    return None


def decide(
    conf: cfg.ConfigOpts,
    created_at: float,
    flow_detail: models.FlowDetail,
    now: float | None = None,
) -> Decision:
    now = time.time() if now is None else now
    atoms = _atoms(flow_detail)
    if flow_detail.state in (tf_states.REVERTING, tf_states.REVERTED, tf_states.FAILURE) or any(
        ad.state in (tf_states.REVERTING, tf_states.REVERTED) for ad in atoms.values()
    ):
        return Decision(ROLLBACK, "it was rolling back when the agent stopped")
    policy = conf.recovery.policy
    if policy == ROLLBACK:
        return Decision(ROLLBACK, "[recovery] policy = rollback")
    deadline = _event_deadline_passed(conf, atoms, now)
    if deadline:
        return Decision(ROLLBACK, deadline)
    stuck = [
        name
        for name, ad in atoms.items()
        if ad.state == tf_states.RUNNING and name in _NOT_RESUMABLE
    ]
    if stuck:
        return Decision(ROLLBACK, f"step {stuck[0]} cannot be resumed")
    age = now - created_at
    if policy == "auto" and age > conf.recovery.resume_window:
        return Decision(
            ROLLBACK,
            f"it is {age:.0f}s old, older than resume_window="
            f"{conf.recovery.resume_window}s (policy auto)",
        )
    return Decision(
        RESUME, f"[recovery] policy = {policy}" + (f", {age:.0f}s old" if policy == "auto" else "")
    )
