"""kill -9 before and after every teardown step's side effect; the delete must finish.

For each point an agent (a subprocess) builds the instance to ACTIVE (a
bridge VIF, a tap VIF, nwfilter filters and a LUKS volume with its libvirt
secret), is handed a delete of it and is SIGKILLed at the point; a fresh
agent must drive the delete forward (a delete is never rolled back) to
DELETED with nothing left on the host, the spawn build DELETED, and the
history must show the interruption and the resumed step.

16 points, ~9 s each. ``make test`` runs the reduced form: every ``after:``
point (the side effect done, its result not recorded: the step must be safe
to run again) and ``before:cancel_builds`` (the delete just DELETING); the
other ``before:`` points are marked ``slow_faults`` and run with the fault
suite's full sweep (``make bench``: ``SPAWNFLOW_FAULTS_FULL=1``; or
``-m slow_faults``; see tests/integration/faults/conftest.py, whose hook
deselects them when the whole suite runs).
"""

from __future__ import annotations

from pathlib import Path

import libvirt
import pytest

import spawnflow.conf
from spawnflow.engine.queue import queue_delete
from spawnflow.flows import teardown
from spawnflow.history import History
from spawnflow.persistence import lifecycle
from spawnflow.persistence.backend import EventLogBackend
from spawnflow.persistence.eventlog import EventLog
from spawnflow.virt.vif.base import tap_name
from tests.crash.conftest import Harness
from tests.crash.test_crash_matrix import crash_spec, luks_volume, volume_conf  # noqa: F401
from tests.helpers import leaks, new_uuid, tap_vif

pytestmark = pytest.mark.integration
STEPS = teardown.step_names()
POINTS = [f"{when}:{step}" for step in STEPS for when in ("before", "after")]
REDUCED = {f"after:{step}" for step in STEPS} | {f"before:{STEPS[0]}"}
CELLS = [
    pytest.param(point, marks=() if point in REDUCED else pytest.mark.slow_faults)
    for point in POINTS
]


def delete_spec(image: Path, bridge: str, volume: tuple[Path, Path]) -> dict:
    """The crash matrix's spec (bridge VIF, LUKS volume) plus a tap VIF spawnflow makes."""
    spec = crash_spec(image, bridge, volume)
    spec["vifs"].append(tap_vif())
    return spec


def queue_the_delete(harness: Harness, instance: str) -> str:
    """Queue a delete for the agent (as ``spawnflow delete --no-wait`` does); its id."""
    log = EventLog.open(spawnflow.conf.database_url(harness.conf))
    backend = EventLogBackend(eventlog=log)
    try:
        row, created = queue_delete(log, backend, instance, force=True)
    finally:
        backend.close()
        log.close()
    assert created
    return str(row.build_id)


def wait_for_death(harness: Harness, proc, delete_id: str, point: str) -> None:
    try:
        proc.wait(150)
    except Exception:
        state = harness.state(delete_id)
        Harness.stop(proc)
        raise AssertionError(f"{point} never fired (delete {state}):\n{harness.output()}") from None
    assert proc.returncode == -9, f"{point} did not fire:\n{harness.output()}"


def history(harness: Harness, build_id: str):
    with History.open(spawnflow.conf.database_url(harness.conf)) as found:
        return found.build(build_id)


@pytest.mark.parametrize("point", CELLS)
def test_kill_during_a_delete_step(
    point,
    tmp_path,
    libvirt_uri,
    libvirt_conn,
    qcow2_image,
    linux_bridge,
    luks_volume,  # noqa: F811 - the crash matrix's fixture
    cleanup,
):
    harness = Harness(
        tmp_path, libvirt_uri, "resume", host="del-" + new_uuid()[:8], **volume_conf(luks_volume)
    )
    spec = delete_spec(qcow2_image, linux_bridge, luks_volume)
    instance = spec["instance"]["uuid"]
    cleanup.append(instance)
    spawn_id = harness.queue(spec)
    # One agent builds the instance, then is handed its delete and dies at ``point``.
    first = harness.launch(point)
    assert harness.wait_final(spawn_id, first) == lifecycle.ACTIVE, harness.output()
    delete_id = queue_the_delete(harness, instance)
    wait_for_death(harness, first, delete_id, point)
    assert harness.state(delete_id) == lifecycle.DELETING
    second = harness.launch(name="recovered")
    try:
        state = harness.wait_final(delete_id, second)
    finally:
        assert harness.stop(second) == 0, harness.output("recovered")
    assert state == lifecycle.DELETED, harness.output("recovered")

    taps = [tap_name(vif["id"]) for vif in spec["vifs"]]
    instances = Path(spawnflow.conf.instances_path(harness.conf))
    assert leaks(libvirt_conn, instance, instances, taps) == []
    with pytest.raises(libvirt.libvirtError):
        libvirt_conn.lookupByName(f"instance-{instance}")
    assert history(harness, spawn_id).state == lifecycle.DELETED

    deleted = history(harness, delete_id)
    moves = [(t.from_state, t.to_state) for t in deleted.lifecycle]
    assert moves == [
        (None, lifecycle.QUEUED),
        (lifecycle.QUEUED, lifecycle.DELETING),
        (lifecycle.DELETING, lifecycle.INTERRUPTED),
        (lifecycle.INTERRUPTED, lifecycle.DELETING),
        (lifecycle.DELETING, lifecycle.DELETED),
    ], moves
    resumed = deleted.lifecycle[3].detail or {}
    assert "a delete is never rolled back" in str(resumed.get("reason")), resumed
    assert (deleted.lifecycle[-1].detail or {}).get("left") == []
    steps = {step.name: step for step in deleted.steps}
    assert [steps[name].state for name in STEPS] == ["SUCCESS"] * len(STEPS)
    killed = point.split(":")[1]
    assert steps[killed].attempts == 2  # run again after the kill
    assert all(steps[name].attempts == 1 for name in STEPS if name != killed)
