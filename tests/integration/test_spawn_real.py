"""The spawn on a real host: libvirtd + QEMU (TCG), a Linux bridge, nwfilter, LUKS.

Nothing is mocked. Every rollback ends with a leak check of the host: no
domain, tap, secret, instance filter, instance directory or partial download.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import libvirt
import pytest

import spawnflow.conf
from spawnflow import Agent
from spawnflow.history import History
from spawnflow.virt import qemu_img
from spawnflow.virt.vif.base import tap_name
from spawnflow.virt.vif.netlink import tap_exists
from tests.helpers import bridge_vif, history_of, leaks, make_spec, new_uuid

pytestmark = pytest.mark.integration


def test_event_delivered_before_the_wait_then_active(
    real_conf, qcow2_image, linux_bridge, libvirt_conn, cleanup
):
    conf = real_conf()
    port = bridge_vif(linux_bridge, active=False)
    spec = make_spec(qcow2_image, vifs=[port])
    cleanup.append(spec["instance"]["uuid"])
    with Agent(conf) as agent:
        build_id = agent.start_build(spec)
        agent.deliver_event(spec["instance"]["uuid"], "network-vif-plugged", port["id"])
        outcome = agent.wait(build_id, timeout=120)
    assert (outcome.state, outcome.error) == ("ACTIVE", None)

    dom = libvirt_conn.lookupByUUIDString(spec["instance"]["uuid"])
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    tap = tap_name(port["id"])
    assert tap_exists(tap)
    assert Path(f"/sys/class/net/{tap}/master").resolve().name == linux_bridge
    names = [f.name() for f in libvirt_conn.listAllNWFilters()]
    assert any(spec["instance"]["uuid"] in n for n in names)
    xml = dom.XMLDesc(0)
    assert f"spawnflow-{spec['instance']['uuid']}" in xml
    build = history_of(conf, build_id)
    assert all(step.state == "SUCCESS" for step in build.steps)
    events = History.open(spawnflow.conf.database_url(conf)).events(build_id)
    assert any(e.kind == "external" and e.name == "network-vif-plugged" for e in events)


def test_event_delivered_during_the_wait(
    real_conf, qcow2_image, linux_bridge, libvirt_conn, cleanup
):
    conf = real_conf()
    port = bridge_vif(linux_bridge, active=False)
    spec = make_spec(qcow2_image, vifs=[port])
    cleanup.append(spec["instance"]["uuid"])
    with Agent(conf) as agent:
        build_id = agent.start_build(spec)

        def deliver_when_paused() -> None:
            for _ in range(600):
                try:
                    dom = libvirt_conn.lookupByUUIDString(spec["instance"]["uuid"])
                    if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                        break
                except libvirt.libvirtError:
                    pass
                threading.Event().wait(0.1)
            agent.deliver_event(spec["instance"]["uuid"], "network-vif-plugged", port["id"])

        sender = threading.Thread(target=deliver_when_paused)
        sender.start()
        outcome = agent.wait(build_id, timeout=120)
        sender.join()
    assert outcome.state == "ACTIVE", outcome.error


def test_vif_timeout_fatal_rolls_back_with_zero_leaks(
    real_conf, qcow2_image, linux_bridge, libvirt_conn, tmp_path
):
    conf = real_conf(network={"vif_plugging_timeout": 2, "vif_plugging_is_fatal": True})
    port = bridge_vif(linux_bridge, active=False)
    spec = make_spec(qcow2_image, vifs=[port])
    with Agent(conf) as agent:
        outcome = agent.wait(agent.start_build(spec), timeout=120)
    assert outcome.state == "ROLLED_BACK"
    assert "VifPlugTimeout" in outcome.error
    instances = Path(spawnflow.conf.instances_path(conf))
    assert (
        leaks(libvirt_conn, spec["instance"]["uuid"], instances, taps=[tap_name(port["id"])]) == []
    )
    build = history_of(conf, outcome.build_id)
    states = {s.name: s.state for s in build.steps}
    assert states["resume"] == "REVERTED" and states["domain_create"] == "REVERTED"
    assert build.failed_step == "resume"


def test_failed_event_not_fatal_goes_active(real_conf, qcow2_image, linux_bridge, cleanup):
    conf = real_conf(network={"vif_plugging_is_fatal": False})
    port = bridge_vif(linux_bridge, active=False)
    spec = make_spec(qcow2_image, vifs=[port])
    cleanup.append(spec["instance"]["uuid"])
    with Agent(conf) as agent:
        build_id = agent.start_build(spec)
        agent.deliver_event(
            spec["instance"]["uuid"], "network-vif-plugged", port["id"], status="failed"
        )
        assert agent.wait(build_id, timeout=120).state == "ACTIVE"


def test_luks_volume_attached_with_a_libvirt_secret(
    real_conf, qcow2_image, tmp_path, libvirt_conn, cleanup
):
    key = tmp_path / "v1.key"
    key.write_text("correct horse battery staple\n")
    os.chmod(key, 0o600)
    volume = tmp_path / "v1.luks"
    qemu_img.create_luks(str(volume), 16 * 1024 * 1024, str(key), iter_time_ms=10)
    conf = real_conf()
    spec = make_spec(
        qcow2_image,
        volumes=[
            {
                "id": new_uuid(),
                "driver": "local",
                "path": str(volume),
                "device": "vdb",
                "encryption": {"format": "luks", "key_file": str(key)},
            }
        ],
    )
    cleanup.append(spec["instance"]["uuid"])
    with Agent(conf) as agent:
        outcome = agent.wait(agent.start_build(spec), timeout=120)
    assert outcome.state == "ACTIVE", outcome.error
    dom = libvirt_conn.lookupByUUIDString(spec["instance"]["uuid"])
    xml = dom.XMLDesc(0)
    assert "<encryption format='luks'" in xml or 'encryption format="luks"' in xml
    secrets = [
        s for s in libvirt_conn.listAllSecrets() if spec["instance"]["uuid"] in (s.usageID() or "")
    ]
    assert len(secrets) == 1
    db = Path(conf.state_path) / "spawnflow.sqlite"
    for path in [db, *db.parent.glob("spawnflow.sqlite-*")]:
        assert b"correct horse" not in path.read_bytes()


def test_encryptor_failure_rolls_back_with_zero_leaks(
    real_conf, qcow2_image, tmp_path, libvirt_conn
):
    key = tmp_path / "open.key"
    key.write_text("world readable\n")
    os.chmod(key, 0o600)  # passes the spec check ...
    volume = tmp_path / "v2.img"
    qemu_img.create(str(volume), "raw", 16 * 1024 * 1024)
    conf = real_conf()
    spec = make_spec(
        qcow2_image,
        volumes=[
            {
                "id": new_uuid(),
                "driver": "local",
                "path": str(volume),
                "device": "vdb",
                "encryption": {"format": "luks", "key_file": str(key)},
            }
        ],
    )

    def progress(_build_id: str, name: str, state: str, _elapsed: float) -> None:
        if (name, state) == ("volumes", "SUCCESS"):
            os.chmod(key, 0o644)  # ... and is readable by others when the encryptor reads it

    with Agent(conf, progress=progress) as agent:
        outcome = agent.wait(agent.start_build(spec), timeout=120)
    assert outcome.state == "ROLLED_BACK"
    assert "EncryptionError" in outcome.error and "mode 0644" in outcome.error
    assert (
        leaks(libvirt_conn, spec["instance"]["uuid"], Path(spawnflow.conf.instances_path(conf)))
        == []
    )
    states = {s.name: s.state for s in history_of(conf, outcome.build_id).steps}
    assert states["volumes"] == "REVERTED" and states["encryptor"] == "REVERTED"
