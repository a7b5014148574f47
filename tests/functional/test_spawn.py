"""One durable spawn end to end on test:///default: success, rollback, bad input."""

from __future__ import annotations

import hashlib
from pathlib import Path

import libvirt
import pytest
import sqlalchemy as sa

import spawnflow.conf
from spawnflow import Agent
from spawnflow.exceptions import InvalidSpec
from spawnflow.flows.spawn import step_names
from spawnflow.history import History
from tests.helpers import bridge_vif, leaks, make_spec

FORWARD = [
    "disk_info",
    "image",
    "volumes",
    "encryptor",
    "domain_xml",
    "vifs",
    "firewall",
    "domain_create",
    "resume",
    "wait_for_boot",
]


def history_of(conf, build_id):
    with History.open(spawnflow.conf.database_url(conf)) as history:
        return history.build(build_id)


def test_flow_order_is_the_design_order():
    assert step_names() == FORWARD


def test_happy_path_reaches_active_with_history(agent, conf, image, bridge, test_conn):
    spec = make_spec(image, vifs=[bridge_vif(bridge, active=False)])
    build_id = agent.start_build(spec)
    outcome = agent.wait(build_id, timeout=60)
    assert (outcome.state, outcome.error) == ("ACTIVE", None)

    dom = test_conn.lookupByUUIDString(spec["instance"]["uuid"])
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    disk = Path(conf.state_path) / "instances" / spec["instance"]["uuid"] / "disk"
    assert disk.exists()

    build = history_of(conf, build_id)
    assert [s.name for s in build.steps] == FORWARD
    assert all(s.state == "SUCCESS" and s.attempts == 1 for s in build.steps)
    assert all(s.started_at <= s.ended_at for s in build.steps)
    assert [t.to_state for t in build.lifecycle] == ["QUEUED", "RUNNING", "ACTIVE"]
    dom.destroy()
    dom.undefine()


def test_checksum_mismatch_rolls_back_and_leaves_nothing(agent, conf, image, test_conn):
    spec = make_spec(image)
    spec["image"]["checksum"] = "sha256:" + "0" * 64
    build_id = agent.start_build(spec)
    outcome = agent.wait(build_id, timeout=60)

    assert outcome.state == "ROLLED_BACK"
    assert "ImageChecksumMismatch" in outcome.error
    build = history_of(conf, build_id)
    states = {s.name: s.state for s in build.steps}
    assert states["disk_info"] == "REVERTED"
    assert states["image"] == "REVERTED"
    assert build.steps[1].error.startswith("ImageChecksumMismatch")
    assert all(states[name] == "PENDING" for name in FORWARD[2:])
    assert [t.to_state for t in build.lifecycle] == [
        "QUEUED",
        "RUNNING",
        "REVERTING",
        "ROLLED_BACK",
    ]
    assert leaks(test_conn, spec["instance"]["uuid"], Path(conf.state_path) / "instances") == []


def test_right_checksum_is_accepted(agent, image, test_conn):
    spec = make_spec(image)
    spec["image"]["checksum"] = "sha256:" + hashlib.sha256(image.read_bytes()).hexdigest()
    outcome = agent.wait(agent.start_build(spec), timeout=60)
    assert outcome.state == "ACTIVE"
    dom = test_conn.lookupByUUIDString(spec["instance"]["uuid"])
    dom.destroy()
    dom.undefine()


def test_domain_create_failure_reverts_every_earlier_step(agent, conf, image, bridge, test_conn):
    spec = make_spec(image, vifs=[bridge_vif(bridge)])
    # Someone else's domain already holds our domain name: defineXML refuses.
    squatter = test_conn.defineXML(
        f"<domain type='test'><name>instance-{spec['instance']['uuid']}</name>"
        "<memory>65536</memory><os><type>hvm</type></os></domain>"
    )
    try:
        outcome = agent.wait(agent.start_build(spec), timeout=60)
        assert outcome.state == "ROLLED_BACK"
        assert "DomainError" in outcome.error and "defineXML" in outcome.error
        build = history_of(conf, outcome.build_id)
        states = {s.name: s.state for s in build.steps}
        assert states["domain_create"] == "REVERTED"
        for name in FORWARD[:7]:
            assert states[name] == "REVERTED", name
        assert states["resume"] == states["wait_for_boot"] == "PENDING"
        reverted = [s for s in build.steps if s.revert_started_at]
        # Reverts run in reverse order of the forward steps.
        assert [s.name for s in sorted(reverted, key=lambda s: s.revert_started_at)] == list(
            reversed(FORWARD[:8])
        )
        assert squatter.UUIDString() != spec["instance"]["uuid"]
        assert test_conn.lookupByName(squatter.name())  # untouched
        assert leaks(test_conn, spec["instance"]["uuid"], Path(conf.state_path) / "instances") == []
    finally:
        squatter.undefine()


def test_invalid_spec_is_rejected_with_nothing_written(agent, conf, image):
    spec = make_spec(image)
    spec["flavor"]["vcpus"] = 0
    spec["vifs"] = [{"id": "not-a-uuid", "mac": "zz", "type": "bridge"}]
    with pytest.raises(InvalidSpec) as raised:
        agent.start_build(spec)
    message = str(raised.value)
    assert "flavor.vcpus" in message and "vifs.0.id" in message and "vifs.0.mac" in message
    engine = sa.create_engine(spawnflow.conf.database_url(conf))
    with engine.connect() as conn:
        # (the only events are the agent's own start; nothing about any build)
        assert (
            conn.execute(sa.text("select count(*) from events where build_id is not null")).scalar()
            == 0
        )
        assert conn.execute(sa.text("select count(*) from builds")).scalar() == 0
    engine.dispose()
    assert not (Path(conf.state_path) / "instances" / spec["instance"]["uuid"]).exists()


def test_unknown_field_is_named(agent, image):
    spec = make_spec(image)
    spec["flavour"] = {"vcpus": 1}
    with pytest.raises(InvalidSpec, match="flavour: Extra inputs are not permitted"):
        agent.start_build(spec)


def test_spec_is_the_first_event_and_secrets_never_reach_the_database(
    agent, conf, image, test_conn
):
    # A secret field no step would use is refused, without echoing it ...
    with pytest.raises(InvalidSpec, match=r"admin_password: .*not supported") as raised:
        agent.start_build(make_spec(image, admin_password="hunter2-very-secret"))
    assert "hunter2" not in str(raised.value)
    spec = make_spec(image)
    build_id = agent.start_build(spec)
    assert agent.wait(build_id, timeout=60).state == "ACTIVE"
    with History.open(spawnflow.conf.database_url(conf)) as history:
        first = history.events(build_id)[0]
    assert first.kind == "build" and first.to_state == "QUEUED"
    assert first.payload["spec"]["instance"]["uuid"] == spec["instance"]["uuid"]
    agent.stop()
    db_file = Path(conf.state_path) / "spawnflow.sqlite"
    for path in [db_file, *db_file.parent.glob("spawnflow.sqlite-*")]:  # ... nor stored
        assert b"hunter2-very-secret" not in path.read_bytes()
    dom = test_conn.lookupByUUIDString(spec["instance"]["uuid"])
    dom.destroy()
    dom.undefine()


def test_start_build_is_idempotent_per_unfinished_instance(conf, image, test_conn):
    spec = make_spec(image)
    with Agent(conf) as agent:
        first = agent.start_build(spec)
        second = agent.start_build(spec)
        assert first == second or agent.wait(first).state == "ACTIVE"
        agent.wait(first, timeout=60)
    dom = test_conn.lookupByUUIDString(spec["instance"]["uuid"])
    dom.destroy()
    dom.undefine()


def test_library_accepts_a_yaml_path(agent, tmp_path, image, test_conn):
    spec = make_spec(image)
    path = tmp_path / "vm.yaml"
    import yaml

    path.write_text(yaml.safe_dump(spec))
    outcome = agent.wait(agent.start_build(str(path)), timeout=60)
    assert outcome.state == "ACTIVE"
    dom = test_conn.lookupByUUIDString(spec["instance"]["uuid"])
    dom.destroy()
    dom.undefine()


def test_secrets_reach_neither_database_nor_logs(conf, image, test_conn, tmp_path):
    import logging

    log_file = tmp_path / "agent.log"
    handler = logging.FileHandler(log_file)
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        spec = make_spec(
            image,
            admin_password="pw-hunter2-admin",
            volumes=[
                {
                    "id": "7f0c0000-0000-4000-8000-00000000000a",
                    "driver": "iscsi",
                    "device": "vdb",
                    "portal": "10.0.0.9:3260",
                    "iqn": "iqn.2010-10.org.openstack:v",
                    "lun": 1,
                    "auth_username": "chap",
                    "auth_password": "pw-hunter2-chap",
                    "secret_uuid": "7f0c0000-0000-4000-8000-0000000000ff",
                }
            ],
        )
        with Agent(conf) as agent:
            # Both are refused (no step would use them), naming the fields only.
            with pytest.raises(InvalidSpec) as raised:
                agent.start_build(spec)
            # A build the agent does run, so the log below has something in it.
            clean = make_spec(image)
            outcome = agent.wait(agent.start_build(clean), timeout=60)
        assert outcome.state == "ACTIVE", outcome.error
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()
    message = str(raised.value)
    assert "admin_password: " in message and "volumes.0.auth_password: " in message
    assert "pw-hunter2" not in message
    engine = sa.create_engine(spawnflow.conf.database_url(conf))
    with engine.connect() as conn:  # only the clean build
        assert conn.execute(sa.text("select count(*) from builds")).scalar() == 1
    engine.dispose()
    db_file = Path(conf.state_path) / "spawnflow.sqlite"
    for path in [log_file, db_file, *db_file.parent.glob("spawnflow.sqlite-*")]:
        data = path.read_bytes()
        assert b"pw-hunter2" not in data, path
    assert log_file.stat().st_size > 0
    with pytest.raises(libvirt.libvirtError):
        test_conn.lookupByUUIDString(spec["instance"]["uuid"])
    dom = test_conn.lookupByUUIDString(clean["instance"]["uuid"])
    dom.destroy()
    dom.undefine()


def test_an_agent_never_touches_another_hosts_builds(tmp_path, image):
    from spawnflow.engine.agent import queue_build
    from spawnflow.flows.spec import parse_spec
    from spawnflow.persistence.backend import EventLogBackend
    from spawnflow.persistence.eventlog import EventLog
    from tests.helpers import load_conf

    conf = load_conf(
        tmp_path,
        DEFAULT={"host": "host-b"},
        libvirt={"connection_uri": "test:///default", "virt_type": "test"},
        firewall={"driver": "noop"},
    )
    log = EventLog.open(spawnflow.conf.database_url(conf))
    backend = EventLogBackend(eventlog=log)
    build_id, _ = queue_build(log, backend, parse_spec(make_spec(image)), "host-a")
    log.close()
    with Agent(conf) as agent:
        assert agent.recovered == {}
        assert agent.pick_up_queued() == []
        assert agent.wait(build_id, timeout=0.5).state == "QUEUED"


def test_second_agent_in_the_same_database_refuses(conf):
    from spawnflow.exceptions import HostOwned

    with Agent(conf), pytest.raises(HostOwned, match="owns host"):
        Agent(conf).start()
    with Agent(conf):  # the first released its lease on stop
        pass


def test_cancel_rolls_back_at_the_next_boundary(conf, image, test_conn):
    spec = make_spec(image)

    def progress(build_id, step, state, elapsed):
        if step == "volumes" and state == "SUCCESS":
            agent.cancel(build_id)

    agent = Agent(conf, progress=progress)
    with agent:
        outcome = agent.wait(agent.start_build(spec), timeout=60)
    assert outcome.state == "ROLLED_BACK"
    assert "BuildCancelled" in outcome.error
    build = history_of(conf, outcome.build_id)
    states = {s.name: s.state for s in build.steps}
    assert states["volumes"] == states["image"] == "REVERTED"
    assert states["encryptor"] == "PENDING"
    assert leaks(test_conn, spec["instance"]["uuid"], Path(conf.state_path) / "instances") == []
