"""The recovery policy as one pure function: what an agent start does with an unfinished build.

    [recovery] policy = resume | rollback | auto

In order, the first rule that applies decides:

0. a build an operator cancelled (a ``cancel-requested`` event) rolls back;
1. a build that was rolling back (the build, its flow or a step was reverting)
   rolls back again, whatever the policy;
1a. a build whose flow version (recorded when it was queued) differs from the
   running code's is never resumed: ``[recovery] on_flow_change = rollback``
   (the default) rolls it back, ``hold`` leaves it INTERRUPTED for an
   operator (``HOLD``). A build with no recorded version (queued before flow
   versions existed) ran the flow every release had until then
   (``UNVERSIONED_FLOW``: the same ten steps, each at version 1.0), so it
   resumes while that is still the running flow, and counts as changed once
   it is not. Reverts accept results stored by an older flow (a test reverts
   with results of the older shape);
2. ``policy = rollback`` rolls back;
3. a build whose ``network-vif-plugged`` wait has a deadline
   (``waiting_since + vif_plugging_timeout``) that passed rolls back when
   ``vif_plugging_is_fatal``: resuming it would only fail at the ``resume`` step;
4. ``policy = auto`` rolls back a build older than ``resume_window``;
5. otherwise it resumes.

The engine's recovery applies it to TaskFlow's details; the history's
diagnosis applies it to the log's fold to say what the next agent start will
do. Both hand in the same facts (``Facts``), so they cannot disagree. It lives
beside the lifecycle table, the lowest layer both can import.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from taskflow import states as tf_states

from spawnflow.persistence.step_results import RESUME_STEP, VIF_PLUGGED, VIFS_STEP, VifsResult

#: The external event an operator's cancel writes (its subject is the build id).
CANCEL_REQUESTED = "cancel-requested"

#: The external event recovery writes, once, when it holds a build whose flow changed.
RECOVERY_HELD = "recovery-held"

RESUME = "resume"
ROLLBACK = "rollback"
AUTO = "auto"
HOLD = "hold"  # a decision (``on_flow_change = hold``): leave the build INTERRUPTED

# Why a decision was taken (``Decision.rule``), for callers that word it their own way.
CANCELLED = "cancelled"
WAS_REVERTING = "was_reverting"
POLICY = "policy"
DEADLINE = "deadline"
WINDOW = "window"
FLOW_CHANGED = "flow_changed"

#: The flow of every build queued before flow versions were recorded (revision
#: 0008): ``flows.spawn.flow_version()`` of the ten steps at version 1.0, spelled
#: out because it must not change when the code does (a test keeps it true).
UNVERSIONED_FLOW = "a57956540e62"


@dataclass(frozen=True)
class Policy:
    """The ``[recovery]`` and ``[network]`` options the rules read."""

    policy: str  # RESUME | ROLLBACK | AUTO
    resume_window: float
    vif_plugging_timeout: float
    vif_plugging_is_fatal: bool
    # The running code's flow version (None: not known to the caller, so the
    # flow rule cannot apply) and ``[recovery] on_flow_change``.
    flow_version: str | None = None
    on_flow_change: str = ROLLBACK  # ROLLBACK | HOLD


@dataclass(frozen=True)
class Facts:
    """What the log says about an unfinished build."""

    created_at: float
    cancelled: bool
    was_reverting: bool
    waiting: VifsResult | None  # the wait the vifs step started and resume did not end
    flow_version: str | None = None  # recorded when queued; None: before flow versions


@dataclass(frozen=True)
class Decision:
    action: str  # RESUME | ROLLBACK | HOLD
    reason: str  # recorded with the build's INTERRUPTED -> RUNNING/REVERTING event
    rule: str = POLICY  # CANCELLED | WAS_REVERTING | FLOW_CHANGED | POLICY | DEADLINE | WINDOW
    deadline: float | None = None  # the passed event deadline (rule DEADLINE)


def open_wait(states: Mapping[str, str | None], results: Mapping[str, Any]) -> VifsResult | None:
    """The ``vifs`` step's wait when that step succeeded and ``resume`` has not.

    ``states`` and ``results`` are per step name; a result that is not a dict
    (a damaged or foreign row) starts no wait.
    """
    result = results.get(VIFS_STEP)
    if states.get(VIFS_STEP) != tf_states.SUCCESS or not isinstance(result, dict):
        return None
    if states.get(RESUME_STEP) == tf_states.SUCCESS:
        return None
    return cast(VifsResult, result)


def event_deadline(waiting: VifsResult | None, timeout: float, now: float) -> float | None:
    """The deadline of a wait for at least one event (None: nothing to wait for).

    A wait without ``waiting_since`` (an older row) counts from ``now``.
    """
    if waiting is None or not waiting.get("expected_events"):
        return None
    return float(waiting.get("waiting_since", now)) + timeout


def deadline_passed(facts: Facts, policy: Policy, now: float) -> float | None:
    """The event deadline that passed and makes the wait fatal (rule 3), else None."""
    deadline = event_deadline(facts.waiting, policy.vif_plugging_timeout, now)
    if deadline is None or now <= deadline or not policy.vif_plugging_is_fatal:
        return None
    return deadline


def flow_change(facts: Facts, policy: Policy) -> Decision | None:
    """Rule 1a: the decision for a build whose flow changed since it started, else None."""
    new = policy.flow_version
    old = facts.flow_version or UNVERSIONED_FLOW
    if new is None or old == new:
        return None
    if policy.on_flow_change == HOLD:
        return Decision(
            HOLD,
            f"flow changed from {old} to {new}: held for the operator rather than "
            "resumed ([recovery] on_flow_change = hold; spawnflow build rollback "
            "finishes it)",
            FLOW_CHANGED,
        )
    return Decision(
        ROLLBACK, f"flow changed from {old} to {new}: rolled back rather than resumed", FLOW_CHANGED
    )


def decide(facts: Facts, policy: Policy, now: float) -> Decision:
    """Resume, roll back or hold; the first rule of the module docstring that applies."""
    if facts.cancelled:
        return Decision(ROLLBACK, "an operator cancelled it", CANCELLED)
    if facts.was_reverting:
        return Decision(ROLLBACK, "it was rolling back when the agent stopped", WAS_REVERTING)
    changed = flow_change(facts, policy)
    if changed is not None:
        return changed
    if policy.policy == ROLLBACK:
        return Decision(ROLLBACK, "[recovery] policy = rollback")
    deadline = deadline_passed(facts, policy, now)
    if deadline is not None:
        return Decision(
            ROLLBACK,
            f"the {VIF_PLUGGED} deadline passed {now - deadline:.0f}s ago (vif_plugging_is_fatal)",
            DEADLINE,
            deadline,
        )
    age = now - facts.created_at
    if policy.policy == AUTO and age > policy.resume_window:
        return Decision(
            ROLLBACK,
            f"it is {age:.0f}s old, older than resume_window={policy.resume_window}s (policy auto)",
            WINDOW,
        )
    return Decision(
        RESUME,
        f"[recovery] policy = {policy.policy}"
        + (f", {age:.0f}s old" if policy.policy == AUTO else ""),
        WINDOW if policy.policy == AUTO else POLICY,
    )
