"""kill -9 at every step boundary, inside side effects and inside reverts; restart.

For each point and policy the agent (a subprocess) is SIGKILLed by the
harness, restarted, and must bring the build to ACTIVE with exactly one
domain (resume) or to ROLLED_BACK with zero leaks (rollback); the history must
show the interruption and the recovery.
"""

from __future__ import annotations

import os
from pathlib import Path

import libvirt
import pytest

import spawnflow.conf
from spawnflow.flows.spawn import step_names
from spawnflow.history import History
from spawnflow.virt import qemu_img
from spawnflow.virt.vif.base import tap_name
from spawnflow.virt.vif.netlink import tap_exists
from tests.crash.conftest import Harness
from tests.helpers import bridge_vif, leaks, make_spec, new_uuid

pytestmark = pytest.mark.integration
STEPS = step_names()
POINTS = [f"{when}:{step}" for step in STEPS for when in ("before", "after")]


@pytest.fixture(scope="module")
def luks_volume(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("luks")
    key = base / "v.key"
    key.write_text("crash-matrix-passphrase\n")
    os.chmod(key, 0o600)
    volume = base / "v.luks"
    qemu_img.create_luks(str(volume), 8 * 1024 * 1024, str(key), iter_time_ms=10)
    return volume, key


def volume_conf(volume: tuple[Path, Path]) -> dict:
    """[volumes]/[encryption] options that allow the LUKS volume and its key file."""
    path, key = volume
    return {"volumes": {"allowed_paths": path.parent}, "encryption": {"key_dir": key.parent}}


def crash_spec(image: Path, bridge: str, volume: tuple[Path, Path]) -> dict:
    path, key = volume
    return make_spec(
        image,
        vifs=[bridge_vif(bridge)],
        volumes=[
            {
                "id": new_uuid(),
                "driver": "local",
                "path": str(path),
                "device": "vdb",
                "encryption": {"format": "luks", "key_file": str(key)},
            }
        ],
    )


def lifecycle_of(harness: Harness, build_id: str) -> list[tuple[str | None, str, dict | None]]:
    with History.open(spawnflow.conf.database_url(harness.conf)) as history:
        return [(t.from_state, t.to_state, t.detail) for t in history.build(build_id).lifecycle]


def assert_clean(conn: libvirt.virConnect, harness: Harness, spec: dict) -> None:
    instances = Path(spawnflow.conf.instances_path(harness.conf))
    taps = [tap_name(v["id"]) for v in spec["vifs"]]
    assert leaks(conn, spec["instance"]["uuid"], instances, taps) == []


def assert_one_active_domain(conn: libvirt.virConnect, spec: dict) -> None:
    uuid = spec["instance"]["uuid"]
    dom = conn.lookupByUUIDString(uuid)
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    same_name = [d for d in conn.listAllDomains() if d.name() == f"instance-{uuid}"]
    assert len(same_name) == 1
    secrets = [s for s in conn.listAllSecrets() if uuid in (s.usageID() or "")]
    assert len(secrets) == 1
    assert tap_exists(tap_name(spec["vifs"][0]["id"]))


def crash_and_recover(harness: Harness, spec: dict, *faults: str) -> tuple[str, str]:
    build_id = harness.queue(spec)
    first = harness.launch(*faults, name="crashed")
    first.wait(150)
    assert first.returncode == -9, f"fault {faults} did not fire:\n{harness.output('crashed')}"
    second = harness.launch(name="recovered")
    try:
        state = harness.wait_final(build_id, second)
    finally:
        assert harness.stop(second) == 0, harness.output("recovered")
    return build_id, state


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("policy", ["resume", "rollback"])
def test_kill_during_forward_steps(
    point,
    policy,
    tmp_path,
    libvirt_uri,
    libvirt_conn,
    qcow2_image,
    linux_bridge,
    luks_volume,
    cleanup,
):
    harness = Harness(
        tmp_path, libvirt_uri, policy, host="crash-" + new_uuid()[:8], **volume_conf(luks_volume)
    )
    spec = crash_spec(qcow2_image, linux_bridge, luks_volume)
    cleanup.append(spec["instance"]["uuid"])
    build_id, state = crash_and_recover(harness, spec, point)

    transitions = lifecycle_of(harness, build_id)
    assert ("RUNNING", "INTERRUPTED") in [(a, b) for a, b, _ in transitions]
    recovery = [detail for a, b, detail in transitions if a == "INTERRUPTED"]
    assert recovery and f"recovery: {policy}" in recovery[0]["reason"]
    if policy == "resume":
        assert state == "ACTIVE", harness.output("recovered")
        assert_one_active_domain(libvirt_conn, spec)
        step = point.split(":")[1]
        with History.open(spawnflow.conf.database_url(harness.conf)) as history:
            steps = {s.name: s for s in history.build(build_id).steps}
        assert steps[step].attempts == 2  # re-run after the kill
        assert all(s.state == "SUCCESS" for s in steps.values())
    else:
        assert state == "ROLLED_BACK", harness.output("recovered")
        assert_clean(libvirt_conn, harness, spec)


@pytest.mark.parametrize("step", STEPS)
def test_kill_in_the_middle_of_a_revert(
    step, tmp_path, libvirt_uri, libvirt_conn, qcow2_image, linux_bridge, luks_volume
):
    # The build fails at its last step, so every step reverts; the kill comes
    # inside the revert of ``step``. Even with policy=resume it must roll back.
    harness = Harness(
        tmp_path, libvirt_uri, "resume", host="crash-" + new_uuid()[:8], **volume_conf(luks_volume)
    )
    spec = crash_spec(qcow2_image, linux_bridge, luks_volume)
    faults = [f"revert:{step}"]
    if step != "wait_for_boot":
        faults.append("fail:wait_for_boot")
    else:
        faults = ["fail:wait_for_boot", "revert:resume"]
    build_id, state = crash_and_recover(harness, spec, *faults)
    assert state == "ROLLED_BACK", harness.output("recovered")
    assert_clean(libvirt_conn, harness, spec)
    transitions = [(a, b) for a, b, _ in lifecycle_of(harness, build_id)]
    assert ("REVERTING", "INTERRUPTED") in transitions
    assert ("INTERRUPTED", "REVERTING") in transitions
