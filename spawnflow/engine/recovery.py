"""What an agent start does with a build it finds unfinished: resume or roll back.

    [recovery] policy = resume | rollback | auto

The rules are ``persistence.recovery_rules.decide`` (one pure function, also
read by the history's diagnosis); this module hands it the facts TaskFlow's
flow and atom details hold. The decision and its reason are recorded with the
build's INTERRUPTED -> RUNNING/REVERTING event.
"""

from __future__ import annotations

import time

from oslo_config import cfg
from taskflow import states as tf_states
from taskflow.persistence import models

from spawnflow.persistence import recovery_rules as rules
from spawnflow.persistence.recovery_rules import RESUME, ROLLBACK, Decision

_REVERTING_FLOW = frozenset({tf_states.REVERTING, tf_states.REVERTED, tf_states.FAILURE})
_REVERTING_ATOM = frozenset({tf_states.REVERTING, tf_states.REVERTED})


def policy_of(conf: cfg.ConfigOpts) -> rules.Policy:
    """The options the recovery rules read, from the agent's configuration."""
    return rules.Policy(
        policy=conf.recovery.policy,
        resume_window=conf.recovery.resume_window,
        vif_plugging_timeout=conf.network.vif_plugging_timeout,
        vif_plugging_is_fatal=conf.network.vif_plugging_is_fatal,
    )


def facts_of(
    created_at: float, flow_detail: models.FlowDetail, cancelled: bool = False
) -> rules.Facts:
    """The facts the rules need, from the build's TaskFlow details and its cancel request."""
    atoms = list(flow_detail)
    return rules.Facts(
        created_at=created_at,
        cancelled=cancelled,
        was_reverting=flow_detail.state in _REVERTING_FLOW
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
) -> Decision:
    """Resume or roll back the interrupted build whose flow is ``flow_detail``.

    ``cancelled``: an operator asked to cancel the build (``cancel-requested``).
    """
    now = time.time() if now is None else now
    return rules.decide(facts_of(created_at, flow_detail, cancelled), policy_of(conf), now)


__all__ = ["RESUME", "ROLLBACK", "Decision", "decide", "facts_of", "policy_of"]
