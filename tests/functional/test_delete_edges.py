# ruff: noqa: F811 - the fixtures imported below are named again as test arguments
"""Edges of delete and audit a review found (issue 12): each used to go wrong.

On test:///default, the agent in this process: a reap never removes the
directory a later ACTIVE build of the instance uses; a failed delete is
never left to tear down a later build; a listed build that ended meanwhile
leaves no stuck future; an event for the instance reaches its spawn, not
its delete; a delete starts while the disk is short.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from spawnflow import Agent
from spawnflow.engine.events import deliver
from spawnflow.engine.operator import refuse_if_instance_busy
from spawnflow.engine.queue import queue_build, queue_delete
from spawnflow.exceptions import SpawnflowError
from spawnflow.flows.spec import parse_spec
from tests.functional.test_delete import UNDEFINE_REFUSED
from tests.functional.test_history_cli import destroy
from tests.functional.test_operator_verbs import (  # noqa: F401 - fixtures
    RESUME_REFUSED,
    failed,
    failing_agent,
)
from tests.helpers import make_spec


def test_a_reap_keeps_the_directory_a_later_active_build_uses(
    failed,
    failing_agent,
    injector,
    image,
    test_conn,
):
    agent, uuid = failing_agent, failed["uuid"]
    injector.disarm()
    directory = Path(agent.instances_path) / uuid
    assert directory.exists()  # the failed rollback left it, marked by that build
    destroy(test_conn, uuid)  # the operator removes the domain by hand ...
    agent.resolve_build(failed["id"], "removed the domain by hand")  # ... and says so
    spec = make_spec(image)
    spec["instance"]["uuid"] = uuid
    later = agent.start_build(spec)
    assert agent.wait(later, timeout=60).state == "ACTIVE"
    report = agent.audit(reap=True, instances=[uuid])
    assert all(str(directory) not in str(f.what) for f in report.reaped), report.reaped
    assert (directory / "disk").exists()
    # Nor may an older build of the instance be retried against it.
    with pytest.raises(SpawnflowError, match="has a later build"):
        refuse_if_instance_busy(agent.eventlog, agent.eventlog.get_build(failed["id"]))


def test_a_failed_delete_is_never_left_to_tear_down_a_later_build(conf, image, injector):
    with Agent(conf, progress=injector.progress) as agent:
        spec = make_spec(image)
        uuid = spec["instance"]["uuid"]
        first = agent.start_build(spec)
        assert agent.wait(first, timeout=60).state == "ACTIVE"
        injector.arm(UNDEFINE_REFUSED)
        failed_delete = agent.delete_instance(uuid, timeout=60)
        assert failed_delete.state == "FAILED"
        injector.disarm()
        # Deleting again returns the failed delete, and no spawn starts beside it.
        assert agent.delete_instance(uuid, timeout=5).build_id == failed_delete.build_id
        with pytest.raises(SpawnflowError, match="FAILED and left it half torn down"):
            agent.start_build(spec)
        agent.retry_build(failed_delete.build_id, "fixed")
        assert agent.wait(failed_delete.build_id, timeout=60).state == "DELETED"
        later = agent.start_build(spec)
        assert agent.wait(later, timeout=60).state == "ACTIVE"
        # The old delete is final now, and a later one leaves the later build to its own.
        with pytest.raises(SpawnflowError, match="only a FAILED build"):
            agent.retry_build(failed_delete.build_id)
        assert agent.eventlog.get_build(later).state == "ACTIVE"


def test_a_build_that_ended_after_it_was_listed_leaves_nothing_stuck(agent, image):
    spec = make_spec(image)
    build_id = agent.start_build(spec)
    assert agent.wait(build_id, timeout=60).state == "ACTIVE"
    listed = agent.eventlog.get_build(build_id)  # as _settle_spawns read it, earlier
    agent._roll_back_now(listed)  # settled: nothing to do, no error
    assert build_id not in agent._futures
    stopper = threading.Thread(target=agent.stop, kwargs={"timeout": 1})
    stopper.start()
    stopper.join(15)
    assert not stopper.is_alive()


def test_an_event_for_the_instance_reaches_its_spawn_not_its_delete(conf, image):
    reached, release = threading.Event(), threading.Event()

    def progress(build_id, step, state, elapsed):
        if step == "domain_create" and state == "SUCCESS":
            reached.set()
            release.wait(60)

    with Agent(conf, progress=progress) as agent:
        spec = make_spec(image)
        build_id = agent.start_build(spec)
        assert reached.wait(60)
        row, _ = queue_delete(agent.eventlog, agent.backend, spec["instance"]["uuid"])
        assert deliver(agent.eventlog, spec["instance"]["uuid"], "network-vif-plugged", "p1") == (
            build_id
        )
        release.set()
        assert agent.pick_up_queued() == [row.build_id]
        assert agent.wait(row.build_id, timeout=60).state == "DELETED"


def test_a_delete_starts_while_the_disk_is_short(agent, image):
    spec = make_spec(image)
    build_id = agent.start_build(spec)
    assert agent.wait(build_id, timeout=60).state == "ACTIVE"
    row, _ = queue_delete(agent.eventlog, agent.backend, spec["instance"]["uuid"])
    other, _ = queue_build(
        agent.eventlog, agent.backend, parse_spec(make_spec(image)), agent.conf.host
    )
    agent.conf.set_override("min_free_disk_mb", 10**9)
    try:
        assert agent.pick_up_queued() == [row.build_id]  # the spawn waits for space
    finally:
        agent.conf.clear_override("min_free_disk_mb")
    assert agent.wait(row.build_id, timeout=60).state == "DELETED"
    assert agent.eventlog.get_build(other).state == "QUEUED"
