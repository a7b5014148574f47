"""The build lifecycle table and the event log's refusal of illegal transitions."""

import pytest
import sqlalchemy as sa

from spawnflow.exceptions import IllegalTransition
from spawnflow.persistence import lifecycle
from spawnflow.persistence.eventlog import EventLog


def test_table_matches_the_design():
    # FINAL: the agent never moves it on by itself (an operator may move FAILED on).
    assert {"ACTIVE", "ROLLED_BACK", "FAILED", "RESOLVED", "DELETED"} == lifecycle.FINAL
    lifecycle.check(None, "QUEUED")
    for a, b in [
        ("QUEUED", "RUNNING"),
        ("RUNNING", "ACTIVE"),
        ("RUNNING", "REVERTING"),
        ("REVERTING", "ROLLED_BACK"),
        ("REVERTING", "FAILED"),
        ("RUNNING", "INTERRUPTED"),
        ("INTERRUPTED", "RUNNING"),
        ("INTERRUPTED", "REVERTING"),
    ]:
        lifecycle.check(a, b)
    for a, b in [
        ("ACTIVE", "RUNNING"),
        ("ROLLED_BACK", "RUNNING"),
        ("QUEUED", "ACTIVE"),
        ("FAILED", "RUNNING"),
        ("FAILED", "ROLLED_BACK"),
        ("RESOLVED", "REVERTING"),
        ("RESOLVED", "FAILED"),
        ("ROLLED_BACK", "RESOLVED"),
        ("ACTIVE", "RESOLVED"),
        ("REVERTING", "RESOLVED"),
        ("INTERRUPTED", "RESOLVED"),
        (None, "RUNNING"),
    ]:
        with pytest.raises(IllegalTransition):
            lifecycle.check(a, b)


def test_operator_transitions_are_marked_and_leave_final_alone():
    # Only an operator moves a FAILED build on: retry (-> REVERTING) or resolve.
    lifecycle.check("FAILED", "REVERTING")
    lifecycle.check("FAILED", "RESOLVED")
    assert lifecycle.by_operator("FAILED", "REVERTING")
    assert lifecycle.by_operator("FAILED", "RESOLVED")
    assert not lifecycle.by_operator("RUNNING", "REVERTING")
    assert lifecycle.TRANSITIONS["spawn"]["FAILED"] == frozenset()
    assert lifecycle.is_final("FAILED") and lifecycle.is_final("RESOLVED")
    assert lifecycle.allowed("RESOLVED") == {"DELETED"}  # only its instance's delete
    assert lifecycle.allowed("RESOLVED", "delete") == frozenset()
    for table in lifecycle.OPERATOR_TRANSITIONS.values():
        for state, targets in table.items():
            assert state in lifecycle.STATES and targets <= lifecycle.STATES


def test_delete_builds_have_their_own_table_and_only_go_forward():
    for a, b in [
        (None, "QUEUED"),
        ("QUEUED", "DELETING"),
        ("DELETING", "DELETED"),
        ("DELETING", "FAILED"),
        ("DELETING", "INTERRUPTED"),
        ("INTERRUPTED", "DELETING"),
        ("FAILED", "DELETING"),  # build retry
        ("FAILED", "RESOLVED"),
    ]:
        lifecycle.check(a, b, "delete")
    for a, b in [
        ("QUEUED", "RUNNING"),
        ("DELETING", "REVERTING"),
        ("INTERRUPTED", "REVERTING"),
        ("INTERRUPTED", "RUNNING"),
        ("DELETED", "DELETING"),
        ("FAILED", "REVERTING"),
        ("ACTIVE", "DELETED"),
    ]:
        with pytest.raises(IllegalTransition, match="delete build"):
            lifecycle.check(a, b, "delete")
    # A spawn build never deletes by itself; its instance's delete moves it.
    for a, b in [("QUEUED", "DELETING"), ("RUNNING", "DELETED"), ("INTERRUPTED", "DELETING")]:
        with pytest.raises(IllegalTransition, match="spawn build"):
            lifecycle.check(a, b)
    for state in ("ACTIVE", "FAILED", "RESOLVED"):
        lifecycle.check(state, "DELETED")
    assert lifecycle.by_operator("FAILED", "DELETING", "delete")
    assert not lifecycle.by_operator("INTERRUPTED", "DELETING", "delete")
    assert "DELETING" not in lifecycle.FINAL and "DELETED" in lifecycle.FINAL
    with pytest.raises(IllegalTransition, match="kind"):
        lifecycle.check(None, "QUEUED", "resize")


def test_the_log_checks_a_delete_build_against_its_own_table(tmp_path):
    log = EventLog.open(f"sqlite:///{tmp_path}/log.sqlite")
    log.create_build("d1", instance_uuid="i1", instance_name="n", host="h", spec={}, kind="delete")
    with pytest.raises(IllegalTransition, match="QUEUED -> RUNNING"):
        log.transition_build("d1", "RUNNING")
    for state in ("DELETING", "INTERRUPTED", "DELETING", "DELETED"):
        log.transition_build("d1", state)
    assert log.get_build("d1").kind == "delete"
    assert log.events("d1")[0].payload["kind"] == "delete"
    log.close()


def test_the_log_takes_operator_transitions_and_refuses_past_resolved(tmp_path):
    log = EventLog.open(f"sqlite:///{tmp_path}/log.sqlite")
    log.create_build("b3", instance_uuid="i3", instance_name="n", host="h", spec={})
    for state in ("RUNNING", "REVERTING", "FAILED", "REVERTING", "FAILED", "RESOLVED"):
        log.transition_build("b3", state)
    for state in ("REVERTING", "FAILED", "RUNNING"):
        with pytest.raises(IllegalTransition, match=f"RESOLVED -> {state}"):
            log.transition_build("b3", state)
    assert log.get_build("b3").state == "RESOLVED"
    log.close()


def test_illegal_build_transition_writes_nothing(tmp_path):
    log = EventLog.open(f"sqlite:///{tmp_path}/log.sqlite")
    log.create_build("b1", instance_uuid="i1", instance_name="n", host="h", spec={})
    log.transition_build("b1", "RUNNING")
    log.transition_build("b1", "ACTIVE")
    with pytest.raises(IllegalTransition, match="ACTIVE -> RUNNING"):
        log.transition_build("b1", "RUNNING")
    assert [e.to_state for e in log.events("b1")] == ["QUEUED", "RUNNING", "ACTIVE"]
    assert log.get_build("b1").state == "ACTIVE"
    log.close()


def test_build_events_are_ordered_and_redacted(tmp_path):
    log = EventLog.open(f"sqlite:///{tmp_path}/log.sqlite")
    log.create_build(
        "b2",
        instance_uuid="i2",
        instance_name="n",
        host="h",
        spec={"admin_password": "s3cret", "volumes": [{"auth_password": "x1"}]},
    )
    first = log.events("b2")[0]
    assert first.payload["spec"]["admin_password"] == "***"
    assert first.payload["spec"]["volumes"][0]["auth_password"] == "***"
    with log.engine.connect() as conn:
        dump = "".join(str(r) for r in conn.execute(sa.text("select * from events")))
    assert "s3cret" not in dump
    log.close()
