"""The spawn flow's version and the recovery rule on a changed flow."""

from __future__ import annotations

import pytest
from taskflow import states

from spawnflow.flows import spawn
from spawnflow.flows.spawn import TASKS, flow_version
from spawnflow.flows.vifs import VifsStep
from spawnflow.persistence import recovery_rules as rules

NOW = 10_000.0


def test_the_digest_is_stable():
    assert flow_version() == flow_version(tuple(TASKS)) == flow_version(list(TASKS))
    assert len(flow_version()) == 12


@pytest.mark.parametrize(
    "tasks",
    [
        TASKS[:-1],  # a step removed
        TASKS + (TASKS[0],),  # a step added
        (TASKS[1], TASKS[0], *TASKS[2:]),  # two steps swapped
    ],
    ids=["removed", "added", "reordered"],
)
def test_the_digest_changes_with_the_steps(tasks):
    assert flow_version(tasks) != flow_version()


def test_the_digest_changes_with_a_step_version(monkeypatch):
    before = flow_version()
    monkeypatch.setattr(VifsStep, "step_version", (1, 1))
    assert flow_version() != before
    monkeypatch.setattr(VifsStep, "step_version", (1, 0))
    assert flow_version() == before


def test_a_step_version_is_its_taskflow_version(monkeypatch):
    monkeypatch.setattr(VifsStep, "step_version", (2, 3))
    assert VifsStep(ctx=None).version == (2, 3)
    assert spawn.TASKS[0](ctx=None).version == (1, 0)


def facts(version: str | None, **kwargs) -> rules.Facts:
    base = {"created_at": NOW - 10, "cancelled": False, "was_reverting": False, "waiting": None}
    base.update(kwargs)
    return rules.Facts(flow_version=version, **base)


def policy(on_flow_change: str = rules.ROLLBACK, policy: str = rules.RESUME) -> rules.Policy:
    return rules.Policy(policy, 600, 300, True, flow_version="new", on_flow_change=on_flow_change)


def test_a_changed_flow_rolls_back_with_the_reason():
    decision = rules.decide(facts("old"), policy(), NOW)
    assert (decision.action, decision.rule) == (rules.ROLLBACK, rules.FLOW_CHANGED)
    assert decision.reason == "flow changed from old to new: rolled back rather than resumed"


def test_a_changed_flow_is_held_when_asked():
    decision = rules.decide(facts("old"), policy(rules.HOLD, rules.ROLLBACK), NOW)
    assert (decision.action, decision.rule) == (rules.HOLD, rules.FLOW_CHANGED)
    assert decision.reason.startswith("flow changed from old to new: held")


def test_a_build_without_a_version_ran_the_unversioned_flow():
    """Queued before 0008: it ran the ten steps at 1.0; it resumes while that flow runs."""
    assert rules.decide(facts(None), policy(), NOW).rule == rules.FLOW_CHANGED
    decision = rules.decide(facts(None), policy(), NOW)
    assert f"flow changed from {rules.UNVERSIONED_FLOW} to new" in decision.reason
    unchanged = rules.Policy(
        rules.RESUME, 600, 300, True, flow_version=rules.UNVERSIONED_FLOW, on_flow_change="rollback"
    )
    assert rules.decide(facts(None), unchanged, NOW).action == rules.RESUME


def test_the_unversioned_flow_is_the_flow_of_the_releases_before_versions():
    from spawnflow.flows import spawn

    before = [
        "disk_info", "image", "volumes", "encryptor", "domain_xml",
        "vifs", "firewall", "domain_create", "resume", "wait_for_boot",
    ]  # fmt: skip
    legacy = [type(n, (), {"step": n, "step_version": (1, 0)}) for n in before]
    assert spawn.flow_version(legacy) == rules.UNVERSIONED_FLOW  # type: ignore[arg-type]


def test_the_same_flow_follows_the_policy():
    assert rules.decide(facts("new"), policy(), NOW).action == rules.RESUME


def test_a_cancel_or_a_revert_finishes_a_held_build():
    """An operator's rollback (a cancel, or the build moved to REVERTING) beats the hold."""
    held = policy(rules.HOLD)
    assert rules.decide(facts("old", cancelled=True), held, NOW).action == rules.ROLLBACK
    assert rules.decide(facts("old", was_reverting=True), held, NOW).action == rules.ROLLBACK


def test_without_the_running_version_the_rule_does_not_apply():
    unknown = rules.Policy(rules.RESUME, 600, 300, True)
    assert rules.decide(facts("old"), unknown, NOW).action == rules.RESUME


def test_the_engine_reads_a_revert_the_flow_never_started():
    """A build moved to REVERTING by an operator and interrupted before its flow reverted."""
    from taskflow.persistence import models

    from spawnflow.engine.recovery import facts_of

    detail = models.FlowDetail("spawn", uuid=models.uuidutils.generate_uuid())
    detail.state = states.RUNNING
    assert not facts_of(NOW, detail).was_reverting
    assert facts_of(NOW, detail, reverting=True).was_reverting


def test_a_build_queued_before_0008_has_no_version_and_new_ones_record_theirs(tmp_path):
    import sqlalchemy as sa
    from alembic import command

    from spawnflow.persistence import db, replay, tables
    from spawnflow.persistence.eventlog import EventLog

    url = f"sqlite:///{tmp_path}/old.sqlite"
    engine = db.make_engine(url)
    with engine.begin() as conn:
        command.upgrade(db._alembic_config(conn), "0007")
    with engine.begin() as conn:
        conn.execute(
            sa.insert(tables.events).values(
                build_id="b0",
                ts=1.0,
                kind="build",
                subject="b0",
                name="old",
                to_state="QUEUED",
                payload={"spec": {}, "host": "h", "instance_uuid": "i0"},
            )
        )
        values = {"instance_name": "old", "host": "h", "state": "QUEUED", "created_at": 1.0}
        conn.execute(
            sa.insert(tables.builds).values(
                build_id="b0", instance_uuid="i0", updated_at=1.0, spec={}, last_seq=1, **values
            )
        )
    engine.dispose()

    with EventLog.open(url) as log:
        assert db.current_revision(log.engine) == db.head_revision()
        assert log.get_build("b0").flow_version is None
        indexes = {i["name"] for i in sa.inspect(log.engine).get_indexes("builds")}
        assert "ux_builds_unfinished_instance" in indexes
        log.create_build(
            "b1", instance_uuid="i1", instance_name="new", host="h", spec={}, flow_version="v1"
        )
        assert log.get_build("b1").flow_version == "v1"
        assert log.events("b1")[0].payload["flow_version"] == "v1"
        rebuilt = replay.replay(log)["builds"]
        assert rebuilt["b1"]["flow_version"] == "v1" and rebuilt["b0"]["flow_version"] is None
