"""The recovery policy as one pure function: what an agent start does with an unfinished build.

    [recovery] policy = resume | rollback | auto

In order, the first rule that applies decides:

0. a build an operator cancelled (a ``cancel-requested`` event) rolls back;
1. a build that was rolling back (the build, its flow or a step was reverting)
   rolls back again, whatever the policy;
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

RESUME = "resume"
ROLLBACK = "rollback"
AUTO = "auto"

# Why a decision was taken (``Decision.rule``), for callers that word it their own way.
CANCELLED = "cancelled"
WAS_REVERTING = "was_reverting"
POLICY = "policy"
DEADLINE = "deadline"
WINDOW = "window"


@dataclass(frozen=True)
class Policy:
    """The ``[recovery]`` and ``[network]`` options the rules read."""

    policy: str  # RESUME | ROLLBACK | AUTO
    resume_window: float
    vif_plugging_timeout: float
    vif_plugging_is_fatal: bool


@dataclass(frozen=True)
class Facts:
    """What the log says about an unfinished build."""

    created_at: float
    cancelled: bool
    was_reverting: bool
    waiting: VifsResult | None  # the wait the vifs step started and resume did not end


@dataclass(frozen=True)
class Decision:
    action: str  # RESUME | ROLLBACK
    reason: str  # recorded with the build's INTERRUPTED -> RUNNING/REVERTING event
    rule: str = POLICY  # CANCELLED | WAS_REVERTING | POLICY | DEADLINE | WINDOW
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


def decide(facts: Facts, policy: Policy, now: float) -> Decision:
    """Resume or roll back; the first rule of the module docstring that applies."""
    if facts.cancelled:
        return Decision(ROLLBACK, "an operator cancelled it", CANCELLED)
    if facts.was_reverting:
        return Decision(ROLLBACK, "it was rolling back when the agent stopped", WAS_REVERTING)
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
