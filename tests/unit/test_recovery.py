"""The recovery decision for an interrupted build."""

from __future__ import annotations

import functools

import pytest
from taskflow import states
from taskflow.persistence import models

import spawnflow.conf
from spawnflow.engine import recovery
from spawnflow.engine.recovery import RESUME, ROLLBACK
from spawnflow.flows.spawn import flow_version
from tests.helpers import write_conf

# A build queued by the running code (the flow-change rule is tested in test_flow_version).
decide = functools.partial(recovery.decide, version=flow_version())


def conf_with(tmp_path, **recovery):
    path = write_conf(tmp_path / "r.conf", recovery=recovery, network={"vif_plugging_timeout": 300})
    return spawnflow.conf.load(["--config-file", str(path)])


def flow(*atoms: tuple[str, str, object]) -> models.FlowDetail:
    detail = models.FlowDetail("spawn", uuid=models.uuidutils.generate_uuid())
    detail.state = states.RUNNING
    for name, state, results in atoms:
        ad = models.TaskDetail(name, uuid=models.uuidutils.generate_uuid())
        ad.state = state
        ad.results = results
        detail.add(ad)
    return detail


NOW = 10_000.0
RUNNING_IMAGE = flow(("disk_info", states.SUCCESS, {}), ("image", states.RUNNING, None))


@pytest.mark.parametrize(
    "policy,age,expected",
    [
        ("resume", 10_000, RESUME),
        ("rollback", 1, ROLLBACK),
        ("auto", 10, RESUME),
        ("auto", 10_000, ROLLBACK),
    ],
)
def test_policy(tmp_path, policy, age, expected):
    decision = decide(
        conf_with(tmp_path, policy=policy, resume_window=600), NOW - age, RUNNING_IMAGE, now=NOW
    )
    assert decision.action == expected
    assert decision.reason


def test_a_build_that_was_reverting_always_rolls_back(tmp_path):
    reverting = flow(("disk_info", states.SUCCESS, {}), ("image", states.REVERTING, None))
    decision = decide(conf_with(tmp_path, policy="resume"), NOW, reverting, now=NOW)
    assert decision.action == ROLLBACK and "rolling back" in decision.reason


def test_passed_event_deadline_rolls_back(tmp_path):
    waiting = flow(
        (
            "vifs",
            states.SUCCESS,
            {"expected_events": ["p1"], "waiting_since": NOW - 400, "plugged": []},
        ),
        ("resume", states.RUNNING, None),
    )
    decision = decide(conf_with(tmp_path, policy="resume"), NOW - 400, waiting, now=NOW)
    assert decision.action == ROLLBACK and "deadline" in decision.reason
    in_time = flow(
        (
            "vifs",
            states.SUCCESS,
            {"expected_events": ["p1"], "waiting_since": NOW - 10, "plugged": []},
        ),
        ("resume", states.RUNNING, None),
    )
    assert decide(conf_with(tmp_path, policy="resume"), NOW, in_time, now=NOW).action == RESUME


def test_a_cancelled_build_rolls_back_whatever_the_policy(tmp_path):
    decision = decide(
        conf_with(tmp_path, policy="resume"), NOW, RUNNING_IMAGE, now=NOW, cancelled=True
    )
    assert decision.action == ROLLBACK and "cancelled" in decision.reason


def test_a_passed_deadline_that_is_not_fatal_resumes(tmp_path):
    path = write_conf(
        tmp_path / "nf.conf",
        recovery={"policy": "resume"},
        network={"vif_plugging_timeout": 300, "vif_plugging_is_fatal": False},
    )
    waiting = flow(
        (
            "vifs",
            states.SUCCESS,
            {"expected_events": ["p1"], "waiting_since": NOW - 400, "plugged": []},
        ),
        ("resume", states.RUNNING, None),
    )
    conf = spawnflow.conf.load(["--config-file", str(path)])
    assert decide(conf, NOW, waiting, now=NOW).action == RESUME


def test_the_diagnosis_says_what_recovery_decides():
    """The history's words come from the same rules the agent runs."""
    from spawnflow.persistence import recovery_rules as rules

    facts = rules.Facts(
        created_at=NOW - 10,
        cancelled=False,
        was_reverting=False,
        waiting={"expected_events": ["p1"], "waiting_since": NOW - 400, "plugged": []},
    )
    policy = rules.Policy("resume", 600, 300, True)
    decision = rules.decide(facts, policy, NOW)
    assert (decision.action, decision.rule, decision.deadline) == (
        ROLLBACK,
        rules.DEADLINE,
        NOW - 100,
    )
