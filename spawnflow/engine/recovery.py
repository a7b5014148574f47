"""What an agent start does with a build it finds unfinished: resume, roll back or hold.

    [recovery] policy = resume | rollback | auto
    [recovery] on_flow_change = rollback | hold

The rules are ``persistence.recovery_rules.decide`` (one pure function, also
read by the history's diagnosis); this module hands it the facts TaskFlow's
flow and atom details hold. The decision and its reason are recorded with the
build's INTERRUPTED -> RUNNING/REVERTING event. A build whose flow changed is
never resumed; held (``on_flow_change = hold``), it stays INTERRUPTED and the
hold and its reason are recorded once, as a ``recovery-held`` external event;
an operator's ``build rollback`` (or cancel) then finishes it.
"""

from __future__ import annotations

import time

from oslo_config import cfg
from taskflow import states as tf_states
from taskflow.persistence import models

from spawnflow.flows.spawn import flow_version
from spawnflow.persistence import lifecycle
from spawnflow.persistence import recovery_rules as rules
from spawnflow.persistence.eventlog import BUILD, EXTERNAL, EventLog
from spawnflow.persistence.recovery_rules import HOLD, RESUME, ROLLBACK, Decision

HELD = "held"  # the to_state of a ``recovery-held`` event

_REVERTING_FLOW = frozenset({tf_states.REVERTING, tf_states.REVERTED, tf_states.FAILURE})
_REVERTING_ATOM = frozenset({tf_states.REVERTING, tf_states.REVERTED})


def policy_of(conf: cfg.ConfigOpts) -> rules.Policy:
    """The options the recovery rules read, from the agent's configuration."""
    return rules.Policy(
        policy=conf.recovery.policy,
        resume_window=conf.recovery.resume_window,
        vif_plugging_timeout=conf.network.vif_plugging_timeout,
        vif_plugging_is_fatal=conf.network.vif_plugging_is_fatal,
        flow_version=flow_version(),
        on_flow_change=conf.recovery.on_flow_change,
    )


def facts_of(
    created_at: float,
    flow_detail: models.FlowDetail,
    cancelled: bool = False,
    *,
    version: str | None = None,
    reverting: bool = False,
) -> rules.Facts:
    """The facts the rules need, from the build's TaskFlow details and its cancel request.

    ``version``: the flow version the build recorded when queued (None: none);
    ``reverting``: the build itself was REVERTING when it was interrupted (an
    operator's rollback the agent had not started yet leaves no trace in the
    flow's details).
    """
    atoms = list(flow_detail)
    return rules.Facts(
        created_at=created_at,
        cancelled=cancelled,
        flow_version=version,
        was_reverting=reverting
        or flow_detail.state in _REVERTING_FLOW
        or any(ad.state in _REVERTING_ATOM for ad in atoms),
        waiting=rules.open_wait(
            {ad.name: ad.state for ad in atoms}, {ad.name: ad.results for ad in atoms}
        ),
    )


def decide(
    conf: cfg.ConfigOpts,
    created_at: float,
    flow_detail: models.FlowDetail,
    now: float | None = None,
    *,
    cancelled: bool = False,
    version: str | None = None,
    reverting: bool = False,
) -> Decision:
    """Resume, roll back or hold the interrupted build whose flow is ``flow_detail``.

    ``cancelled``: an operator asked to cancel the build (``cancel-requested``);
    ``version`` and ``reverting``: see ``facts_of``.
    """
    now = time.time() if now is None else now
    facts = facts_of(created_at, flow_detail, cancelled, version=version, reverting=reverting)
    return rules.decide(facts, policy_of(conf), now)


def interrupted_while_reverting(eventlog: EventLog, build_id: str) -> bool:
    """Whether the build's latest move to INTERRUPTED was from REVERTING."""
    moves = [
        e
        for e in eventlog.events(build_id)
        if e.kind == BUILD and e.to_state == lifecycle.INTERRUPTED
    ]
    return bool(moves) and moves[-1].from_state == lifecycle.REVERTING


def decide_for(
    conf: cfg.ConfigOpts,
    eventlog: EventLog,
    build_id: str,
    flow_detail: models.FlowDetail,
    cancelled: bool = False,
) -> Decision:
    """``decide`` for an INTERRUPTED build of ``eventlog``; a hold is recorded (once).

    A held build stays INTERRUPTED: the caller must leave it alone. Its
    ``recovery-held`` event is written the first time only, so later agent
    starts add nothing to its history until an operator acts.
    """
    row = eventlog.get_build(build_id)
    decision = decide(
        conf,
        row.created_at,
        flow_detail,
        cancelled=cancelled,
        version=row.flow_version,
        reverting=interrupted_while_reverting(eventlog, build_id),
    )
    if decision.action == HOLD and not is_held(eventlog, build_id):
        with eventlog.transaction(build_id, from_outside=True) as conn:
            EventLog.append(
                conn,
                kind=EXTERNAL,
                build_id=build_id,
                subject=build_id,
                name=rules.RECOVERY_HELD,
                to_state=HELD,
                payload={"reason": decision.reason, "flow_version": flow_version()},
            )
    return decision


def is_held(eventlog: EventLog, build_id: str) -> bool:
    """Whether recovery already recorded a hold of the build."""
    return any(e.name == rules.RECOVERY_HELD for e in eventlog.external_events(build_id))


__all__ = [
    "HOLD",
    "RESUME",
    "ROLLBACK",
    "Decision",
    "decide",
    "decide_for",
    "facts_of",
    "is_held",
    "policy_of",
]
