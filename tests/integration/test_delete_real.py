"""Durable delete on qemu:///system, from every state an instance can be in (issue 12).

Every instance has a tap VIF (made by spawnflow), a bridge VIF (made by
libvirt), an nwfilter filter per VIF, and a LUKS-encrypted local volume with
its libvirt secret. The agent runs in this process on the real libvirtd;
each delete must end DELETED with nothing of the instance left on the host
(``tests.helpers.leaks``: domain, taps, secret, filters, filter bindings,
instance directory, partial files). The starting states: ACTIVE; a FAILED
build whose rollback failed for good (neutron reports the port's plug
failed, then libvirt refuses the domain's destroy: the harness's fault
injector), which leaves its domain paused; a guest an operator paused; a
build RUNNING in ``resume`` (waiting for network-vif-plugged); a build
INTERRUPTED and held by ``[recovery] on_flow_change = hold``; an instance
with no build (refused). ``spawnflow delete --force`` runs once
through the real CLI. The test guest ignores ACPI, so ``shutdown_timeout``
is 2 s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import libvirt
import pytest
import sqlalchemy as sa

import spawnflow.conf
from spawnflow import Agent
from spawnflow.exceptions import DeleteRefused
from spawnflow.flows.teardown import step_names
from spawnflow.flows.vifs import VifsStep
from spawnflow.persistence import lifecycle
from spawnflow.persistence import tables as t
from spawnflow.persistence.recovery_rules import HOLD
from spawnflow.persistence.step_results import VIF_PLUGGED
from spawnflow.virt import qemu_img, secrets
from spawnflow.virt.firewall.nwfilter import filter_name
from spawnflow.virt.vif.base import tap_name
from spawnflow.virt.vif.netlink import tap_exists
from tests.faults import LIBVIRT, PERMANENT, REVERT, Fault, Injector, Site
from tests.helpers import bridge_vif, history_of, leaks, make_spec, new_uuid, tap_vif

pytestmark = pytest.mark.integration

STEPS = step_names()
DESTROY_REFUSED = Fault(Site(LIBVIRT, "domain.destroy", "domain_create", REVERT), PERMANENT)
LONG_WAIT = 600  # vif_plugging_timeout of a build that must still be waiting when deleted


# -- harness ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def luks_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(volume, key file) of one LUKS volume, copied per instance (its key derivation is slow)."""
    where = tmp_path_factory.mktemp("luks")
    key = where / "template.key"
    key.write_bytes(os.urandom(16).hex().encode())
    key.chmod(0o600)
    path = where / "template.luks"
    qemu_img.create_luks(str(path), 8 * 1024 * 1024, str(key), iter_time_ms=10)
    return path, key


@pytest.fixture
def make_instance(
    tmp_path: Path,
    qcow2_image: Path,
    linux_bridge: str,
    luks_template: tuple[Path, Path],
    cleanup: list[str],
) -> Any:
    """``make_instance(tap_active=True)``: a spec with a tap VIF, a bridge VIF and a LUKS
    volume (its own copy, in tmp_path). An inactive tap VIF makes ``resume`` wait for
    its network-vif-plugged."""

    def make(tap_active: bool = True) -> dict[str, Any]:
        volume_id = new_uuid()
        path, key = tmp_path / f"{volume_id}.luks", tmp_path / f"{volume_id}.key"
        shutil.copyfile(luks_template[0], path)
        shutil.copyfile(luks_template[1], key)
        key.chmod(0o600)
        volume = {
            "id": volume_id,
            "driver": "local",
            "path": str(path),
            "device": "vdb",
            "encryption": {"format": "luks", "key_file": str(key)},
        }
        vifs = [tap_vif(active=tap_active), bridge_vif(linux_bridge)]
        spec = make_spec(qcow2_image, vifs=vifs, volumes=[volume])
        cleanup.append(spec["instance"]["uuid"])
        return spec

    return make


@pytest.fixture
def conf_for(real_conf: Any) -> Any:
    """``conf_for(**recovery)``: the real host's config, shutdown_timeout = 2 s."""

    def make(vif_plugging_timeout: int = 30, **recovery: str) -> Any:
        return real_conf(
            DEFAULT={"shutdown_timeout": 2},
            network={"vif_plugging_timeout": vif_plugging_timeout},
            recovery={"policy": "resume", **recovery},
        )

    return make


def owned(conf: Any, spec: dict[str, Any], build_id: str) -> list[str]:
    """What an ACTIVE build of ``spec`` has on the host, in ``leaks`` words."""
    instance = spec["instance"]["uuid"]
    instances = Path(spawnflow.conf.instances_path(conf))
    found = [
        f"domain {instance}",
        f"domain named instance-{instance}",
        f"instance dir {instances / instance}",
    ]
    for port in spec["vifs"]:
        nwfilter = filter_name(instance, port["mac"], build_id)
        found += [
            f"tap {tap_name(port['id'])}",
            f"nwfilter {nwfilter}",
            f"nwfilter binding {tap_name(port['id'])} -> {nwfilter}",
        ]
    found += [f"secret {secrets.usage_id(instance, v['id'], build_id)}" for v in spec["volumes"]]
    return sorted(found)


def on_host(conn: Any, conf: Any, spec: dict[str, Any]) -> list[str]:
    """What of the instance is on the host: ``leaks`` plus half-made files."""
    instance = spec["instance"]["uuid"]
    instances = Path(spawnflow.conf.instances_path(conf))
    taps = [tap_name(port["id"]) for port in spec["vifs"]]
    found = leaks(conn, instance, instances, taps)
    found += [
        f"partial file {path}"
        for path in instances.rglob("*")
        if path.suffix in (".tmp", ".part") or (instance in path.name and path.parent == instances)
        if path != instances / instance
    ]
    with_name = [d for d in conn.listAllDomains() if d.name() == f"instance-{instance}"]
    return sorted(found + [f"domain named {d.name()}" for d in with_name])


def assert_deleted(conn: Any, conf: Any, spec: dict[str, Any], delete_id: str) -> Any:
    """The delete ended DELETED, every step once, nothing of the instance left; its history."""
    deleted = history_of(conf, delete_id)
    assert deleted.kind == lifecycle.DELETE
    assert deleted.state == lifecycle.DELETED, deleted.error
    assert [(s.name, s.state) for s in deleted.steps] == [(n, "SUCCESS") for n in STEPS]
    assert (deleted.lifecycle[-1].detail or {}).get("left") == []
    assert on_host(conn, conf, spec) == []
    return deleted


def removed_by(deleted: Any, step: str) -> list[str]:
    return list((deleted.step(step).result or {}).get("removed") or [])


def event_rows(conf: Any) -> int:
    engine = sa.create_engine(spawnflow.conf.database_url(conf))
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(t.events)).scalar_one())
    finally:
        engine.dispose()


def waiting_in_resume() -> tuple[threading.Event, Any]:
    """(event, progress callback): the event is set once a build's ``resume`` runs."""
    reached = threading.Event()

    def progress(_build_id: str, step: str, state: str, _elapsed: float) -> None:
        if (step, state) == ("resume", "RUNNING"):
            reached.set()

    return reached, progress


# -- from ACTIVE ----------------------------------------------------------------------------


def test_an_active_instance_is_deleted_and_can_be_built_again(
    conf_for: Any, make_instance: Any, libvirt_conn: Any
) -> None:
    conf = conf_for()
    spec = make_instance()
    instance = spec["instance"]["uuid"]
    with Agent(conf) as agent:
        build_id = agent.start_build(spec)
        assert agent.wait(build_id, timeout=120).state == lifecycle.ACTIVE
        assert on_host(libvirt_conn, conf, spec) == owned(conf, spec, build_id)

        outcome = agent.delete_instance(instance, timeout=120)
        assert outcome.state == lifecycle.DELETED, outcome
        deleted = assert_deleted(libvirt_conn, conf, spec, outcome.build_id)
        assert [c.to_state for c in deleted.lifecycle] == ["QUEUED", "DELETING", "DELETED"]
        assert history_of(conf, build_id).state == lifecycle.DELETED
        # Each part went with its own step (not, say, with the domain's undefine);
        # the guest ignores ACPI: destroyed after shutdown_timeout. (A VIF's unplug
        # reports nothing, so its step's "removed" stays empty.)
        assert removed_by(deleted, "power_off") == [f"domain {instance} destroyed"]
        assert len(removed_by(deleted, "remove_filters")) == 2
        assert len(removed_by(deleted, "undefine_secrets")) == 1
        assert len(removed_by(deleted, "remove_files")) == 1
        assert removed_by(deleted, "undefine_domain") == [f"domain {instance}"]

        # The same uuid (same ports, same volume) builds again, and goes again.
        again = agent.start_build(spec)
        assert again != build_id
        assert agent.wait(again, timeout=120).state == lifecycle.ACTIVE
        assert on_host(libvirt_conn, conf, spec) == owned(conf, spec, again)
        second = agent.delete_instance(instance, timeout=120, force=True)
        assert second.state == lifecycle.DELETED and second.build_id != outcome.build_id
        assert_deleted(libvirt_conn, conf, spec, second.build_id)
        assert history_of(conf, again).state == lifecycle.DELETED


# -- from FAILED, with what the failed rollback left ---------------------------------------


def test_a_failed_build_with_leftovers_is_deleted(
    conf_for: Any, make_instance: Any, libvirt_conn: Any, injector: Injector
) -> None:
    conf = conf_for()
    spec = make_instance(tap_active=False)
    instance, port = spec["instance"]["uuid"], spec["vifs"][0]["id"]

    def progress(build_id: str, step: str, state: str, elapsed: float) -> None:
        injector.progress(build_id, step, state, elapsed)
        if (step, state) == ("vifs", "SUCCESS"):  # neutron: the plug failed
            agent.deliver_event(instance, VIF_PLUGGED, port, status="failed")

    injector.arm(DESTROY_REFUSED)  # the rollback that follows breaks for good
    agent = Agent(conf, progress=progress)
    with agent:
        failed = agent.wait(agent.start_build(spec), timeout=120)
        assert failed.state == lifecycle.FAILED, failed
        left = on_host(libvirt_conn, conf, spec)
        for part in (f"domain {instance}", f"tap {tap_name(port)}", "secret ", "nwfilter "):
            assert any(thing.startswith(part) for thing in left), (part, left)

        injector.disarm()  # the operator fixed libvirt; the build's leftovers stay
        # force: its domain is left PAUSED, which an ACPI request does not stop
        # (see test_a_paused_guest_is_destroyed_before_its_filters_go).
        outcome = agent.delete_instance(instance, timeout=120, force=True)
    assert outcome.state == lifecycle.DELETED, outcome
    deleted = assert_deleted(libvirt_conn, conf, spec, outcome.build_id)
    assert history_of(conf, failed.build_id).state == lifecycle.DELETED
    assert deleted.step("cancel_builds").result == {"rolled_back": []}  # FAILED is final
    assert removed_by(deleted, "power_off") == [f"domain {instance} destroyed"]
    assert removed_by(deleted, "undefine_domain") == [f"domain {instance}"]


def test_a_paused_guest_is_destroyed_before_its_filters_go(
    conf_for: Any, make_instance: Any, libvirt_conn: Any
) -> None:
    conf = conf_for()
    spec = make_instance()
    instance = spec["instance"]["uuid"]
    with Agent(conf) as agent:
        build_id = agent.start_build(spec)
        assert agent.wait(build_id, timeout=120).state == lifecycle.ACTIVE
        libvirt_conn.lookupByUUIDString(instance).suspend()  # an operator paused it
        outcome = agent.delete_instance(instance, timeout=120)
    assert outcome.state == lifecycle.DELETED, outcome
    deleted = assert_deleted(libvirt_conn, conf, spec, outcome.build_id)
    assert removed_by(deleted, "power_off") == [f"domain {instance} destroyed"]


# -- from RUNNING: cancelled and rolled back first ------------------------------------------


def test_a_build_waiting_in_resume_is_rolled_back_then_deleted(
    conf_for: Any, make_instance: Any, libvirt_conn: Any
) -> None:
    conf = conf_for(vif_plugging_timeout=LONG_WAIT)
    spec = make_instance(tap_active=False)
    reached, progress = waiting_in_resume()
    with Agent(conf, progress=progress) as agent:
        build_id = agent.start_build(spec)
        assert reached.wait(120), "the build never reached resume"
        assert history_of(conf, build_id).state == lifecycle.RUNNING
        outcome = agent.delete_instance(spec["instance"]["uuid"], timeout=120)
    assert outcome.state == lifecycle.DELETED, outcome
    deleted = assert_deleted(libvirt_conn, conf, spec, outcome.build_id)
    assert deleted.step("cancel_builds").result == {"rolled_back": [build_id]}
    spawned = history_of(conf, build_id)
    assert spawned.state == lifecycle.ROLLED_BACK  # rolled back: nothing left to delete
    assert [c.to_state for c in spawned.lifecycle][-2:] == ["REVERTING", "ROLLED_BACK"]


# -- from INTERRUPTED, held by the recovery policy ------------------------------------------


def test_an_interrupted_build_held_by_recovery_is_rolled_back_then_deleted(
    conf_for: Any, make_instance: Any, libvirt_conn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = conf_for(vif_plugging_timeout=LONG_WAIT, on_flow_change="hold")
    spec = make_instance(tap_active=False)
    reached, progress = waiting_in_resume()
    first = Agent(conf, progress=progress)
    first.start()
    try:
        build_id = first.start_build(spec)
        assert reached.wait(120), "the build never reached resume"
    finally:
        first.stop()
    assert history_of(conf, build_id).state == lifecycle.INTERRUPTED
    monkeypatch.setattr(VifsStep, "step_version", (1, 1))  # a new release: the flow changed

    with Agent(conf) as agent:
        assert agent.recovered[build_id].action == HOLD
        assert agent.wait(build_id, timeout=1).state == lifecycle.INTERRUPTED  # held
        assert tap_exists(tap_name(spec["vifs"][0]["id"]))  # what it made is still there
        outcome = agent.delete_instance(spec["instance"]["uuid"], timeout=120)
    assert outcome.state == lifecycle.DELETED, outcome
    deleted = assert_deleted(libvirt_conn, conf, spec, outcome.build_id)
    assert deleted.step("cancel_builds").result == {"rolled_back": [build_id]}
    assert history_of(conf, build_id).state == lifecycle.ROLLED_BACK


# -- no build: refused ----------------------------------------------------------------------


def test_an_instance_with_no_build_is_refused_and_nothing_is_written(
    conf_for: Any, libvirt_conn: Any
) -> None:
    conf = conf_for()
    with Agent(conf) as agent:
        before = event_rows(conf)
        stranger = new_uuid()
        with pytest.raises(DeleteRefused, match="has no build in this database"):
            agent.delete_instance(stranger, timeout=10)
        assert event_rows(conf) == before
        assert agent.eventlog.builds(instance_uuid=stranger) == []
    with pytest.raises(libvirt.libvirtError):
        libvirt_conn.lookupByUUIDString(stranger)


# -- the CLI --------------------------------------------------------------------------------


def test_spawnflow_delete_force_through_the_cli(
    conf_for: Any, make_instance: Any, libvirt_conn: Any, tmp_path: Path
) -> None:
    conf = conf_for()
    spec = make_instance()
    instance = spec["instance"]["uuid"]
    with Agent(conf) as agent:
        build_id = agent.start_build(spec)
        assert agent.wait(build_id, timeout=120).state == lifecycle.ACTIVE
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "spawnflow.cmd.main",
            "--config-file",
            str(tmp_path / "spawnflow.conf"),
            "delete",
            instance,
            "--force",
            "--timeout",
            "120",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    delete_id = result.stdout.split("delete ", 1)[1].split()[0]
    for step in STEPS:
        assert step in result.stdout, result.stdout
    deleted = assert_deleted(libvirt_conn, conf, spec, delete_id)
    assert deleted.spec["force"] is True
    # --force: destroyed at once, no ACPI request (that one is "powered off (ACPI)").
    assert removed_by(deleted, "power_off") == [f"domain {instance} destroyed"]
    assert history_of(conf, build_id).state == lifecycle.DELETED
