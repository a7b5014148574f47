"""Durable delete on libvirt's test:///default driver (issue 12, must-have 1).

The agent runs in this process; the CLI runs in subprocesses on the same
database. Real deletes on qemu:///system, with taps, filters and a LUKS
volume, are in tests/integration/test_delete_real.py; kill -9 at every
teardown step in tests/crash/test_delete_matrix.py.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from spawnflow import Agent
from spawnflow.exceptions import DeleteRefused, SpawnflowError
from spawnflow.flows.teardown import step_names
from spawnflow.history import History
from spawnflow.persistence import tables as t
from tests.faults import LIBVIRT, PERMANENT, Fault, Site
from tests.functional.test_history_cli import cli, diagnosis_text, ok, refused
from tests.helpers import leaks, make_spec, new_uuid

UNDEFINE_REFUSED = Fault(
    Site(LIBVIRT, "domain.undefineFlags", "undefine_domain", "execute"), PERMANENT
)


def history(agent: Agent, build_id: str):
    with History.open(str(agent.eventlog.engine.url.render_as_string(hide_password=False))) as h:
        return h.build(build_id)


def rows(agent: Agent) -> int:
    with agent.eventlog.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(t.events)).scalar_one()


@pytest.fixture
def active(agent, image) -> dict:
    spec = make_spec(image)
    build_id = agent.start_build(spec)
    assert agent.wait(build_id, timeout=60).state == "ACTIVE"
    return {"spec": spec, "uuid": spec["instance"]["uuid"], "build": build_id}


def test_delete_of_an_active_instance_runs_every_step_and_allows_a_new_build(
    agent, active, test_conn
):
    uuid = active["uuid"]
    outcome = agent.delete_instance(uuid, timeout=60)
    assert outcome.state == "DELETED", outcome
    deleted = history(agent, outcome.build_id)
    assert deleted.kind == "delete"
    assert [(s.name, s.state) for s in deleted.steps] == [(n, "SUCCESS") for n in step_names()]
    assert [c.to_state for c in deleted.lifecycle] == ["QUEUED", "DELETING", "DELETED"]
    assert history(agent, active["build"]).state == "DELETED"
    assert leaks(test_conn, uuid, Path(agent.instances_path)) == []
    # Deleting again returns that delete; nothing new is written.
    before = rows(agent)
    assert agent.delete_instance(uuid, timeout=5).build_id == outcome.build_id
    assert rows(agent) == before
    # The uuid may be built again.
    again = agent.start_build(active["spec"])
    assert again != active["build"]
    assert agent.wait(again, timeout=60).state == "ACTIVE"


def test_an_instance_with_no_build_or_a_bad_uuid_is_refused_with_nothing_written(agent):
    before = rows(agent)
    with pytest.raises(DeleteRefused, match="has no build in this database"):
        agent.delete_instance(new_uuid())
    with pytest.raises(DeleteRefused, match="instance: 'vm-1; rm -rf' is not a UUID"):
        agent.delete_instance("vm-1; rm -rf")
    assert rows(agent) == before


def test_a_running_build_is_cancelled_and_rolled_back_first(conf, image, test_conn):
    reached, release = threading.Event(), threading.Event()

    def progress(build_id, step, state, elapsed):
        if step == "domain_create" and state == "SUCCESS":
            reached.set()  # the build is RUNNING, its domain made
            release.wait(60)

    with Agent(conf, progress=progress) as agent:
        spec = make_spec(image)
        build_id = agent.start_build(spec)
        assert reached.wait(60)
        queued = agent.delete_instance(spec["instance"]["uuid"], timeout=0.5)
        assert queued.state in ("QUEUED", "DELETING"), queued  # waits for the build
        release.set()
        outcome = agent.wait(queued.build_id, timeout=60)
        assert outcome.state == "DELETED", outcome
        assert history(agent, build_id).state == "ROLLED_BACK"
        cancel = history(agent, outcome.build_id).step("cancel_builds")
        assert cancel.result == {"rolled_back": [build_id]}
        assert leaks(test_conn, spec["instance"]["uuid"], Path(agent.instances_path)) == []


def test_a_build_queued_while_its_instance_is_deleted_is_refused(agent, active):
    log = agent.eventlog
    from spawnflow.engine.queue import queue_delete

    row, created = queue_delete(log, agent.backend, active["uuid"])  # not picked up yet
    assert created and row.state == "QUEUED"
    with pytest.raises(SpawnflowError, match="is being deleted"):
        agent.start_build(active["spec"])
    with pytest.raises(SpawnflowError, match="a delete is never cancelled"):
        agent.cancel(row.build_id)
    with pytest.raises(SpawnflowError, match="never cancelled or rolled back"):
        agent.rollback_build(row.build_id)
    assert agent.pick_up_queued() == [row.build_id]
    assert agent.wait(row.build_id, timeout=60).state == "DELETED"


def test_a_failed_delete_names_what_is_left_and_a_retry_finishes_it(
    conf, image, injector, test_conn, tmp_path
):
    with Agent(conf, progress=injector.progress) as agent:
        spec = make_spec(image)
        uuid = spec["instance"]["uuid"]
        build_id = agent.start_build(spec)
        assert agent.wait(build_id, timeout=60).state == "ACTIVE"
        injector.arm(UNDEFINE_REFUSED)
        outcome = agent.delete_instance(uuid, timeout=60)
        assert outcome.state == "FAILED", outcome
        assert outcome.error.startswith("undefine_domain: DeleteIncomplete: could not remove")
        assert f"domain {uuid}" in outcome.error
        assert history(agent, build_id).state == "ACTIVE"  # not deleted: its domain is there
        text = diagnosis_text(
            ok(cli(tmp_path / "spawnflow.conf", "history", "show", outcome.build_id, "--diagnose"))
        )
        assert "delete failed" in text and "build retry" in text, text

        injector.disarm()  # the operator fixed the cause
        out = ok(cli(tmp_path / "spawnflow.conf", "build", "retry", outcome.build_id))
        assert "retry" in out
        assert agent.pick_up_requests() == [outcome.build_id]
        assert agent.wait(outcome.build_id, timeout=60).state == "DELETED"
        assert history(agent, build_id).state == "DELETED"
        assert leaks(test_conn, uuid, Path(agent.instances_path)) == []
        changes = [c.to_state for c in history(agent, outcome.build_id).lifecycle]
        assert changes == ["QUEUED", "DELETING", "FAILED", "DELETING", "DELETED"]


def test_cli_delete_no_wait_is_picked_up_by_the_agent(agent, active, tmp_path, test_conn):
    conf = tmp_path / "spawnflow.conf"
    out = ok(cli(conf, "delete", active["uuid"], "--no-wait"))
    assert "queued for the agent of host" in out
    delete_id = out.split()[1]
    assert agent.pick_up_queued() == [delete_id]
    assert agent.wait(delete_id, timeout=60).state == "DELETED"
    again = ok(cli(conf, "delete", active["uuid"], "--no-wait"))
    assert f"delete {delete_id}" in again and "already DELETED" in again
    refused(cli(conf, "delete", new_uuid(), "--no-wait"), "has no build in this database")
    refused(cli(conf, "delete", "not-a-uuid", "--no-wait"), "instance: 'not-a-uuid'")
    text = diagnosis_text(ok(cli(conf, "history", "show", active["build"], "--diagnose")))
    assert f"deleted by build {delete_id}" in text, text
    show = ok(cli(conf, "history", "show", delete_id, "--diagnose"))
    assert f"build     {delete_id}  (a delete)" in show
    assert "QUEUED -> DELETING -> DELETED" in show
    assert "DELETED: " in diagnosis_text(show) and "thing(s) removed" in diagnosis_text(show)


def test_a_delete_whose_flow_changed_runs_every_step_again(conf, image, test_conn):
    with Agent(conf) as agent:
        spec = make_spec(image)
        build_id = agent.start_build(spec)
        assert agent.wait(build_id, timeout=60).state == "ACTIVE"
        from spawnflow.engine.queue import queue_delete

        row, _ = queue_delete(agent.eventlog, agent.backend, spec["instance"]["uuid"])
        # As an agent killed mid-delete by an older release would leave it.
        agent.eventlog.transition_build(row.build_id, "DELETING")
        with agent.eventlog.engine.begin() as conn:
            conn.execute(
                sa.update(t.builds)
                .where(t.builds.c.build_id == row.build_id)
                .values(flow_version="0123456789ab")
            )
    with Agent(conf) as agent:
        assert agent.wait(row.build_id, timeout=60).state == "DELETED"
        decision = agent.recovered[row.build_id]
        assert "delete flow changed from 0123456789ab" in decision.reason
    assert leaks(test_conn, spec["instance"]["uuid"], Path(agent.instances_path)) == []
