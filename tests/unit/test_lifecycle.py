"""The build lifecycle table and the event log's refusal of illegal transitions."""

import pytest
import sqlalchemy as sa

from spawnflow.exceptions import IllegalTransition
from spawnflow.persistence import lifecycle
from spawnflow.persistence.eventlog import EventLog


def test_table_matches_the_design():
    assert {"ACTIVE", "ROLLED_BACK", "FAILED"} == lifecycle.FINAL
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
        ("FAILED", "REVERTING"),
        (None, "RUNNING"),
    ]:
        with pytest.raises(IllegalTransition):
            lifecycle.check(a, b)


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
