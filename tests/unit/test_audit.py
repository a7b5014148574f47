"""The host audit's parts that need no libvirt: markers, the log's side, files, the diagnosis.

The whole audit on a real host is ``tests/integration/test_audit.py``.
"""

from __future__ import annotations

import fcntl
import os
import time
import uuid
from pathlib import Path

import pytest

import spawnflow.conf
from spawnflow.engine.audit import HostBuilds, expected, used_images
from spawnflow.history import History
from spawnflow.history.host_audit import AUDIT, FOUND
from spawnflow.persistence import lifecycle
from spawnflow.persistence.eventlog import EventLog
from spawnflow.virt import inventory, inventory_files
from spawnflow.virt.firewall.nwfilter import filter_name
from spawnflow.virt.instance_files import DISK_MARKER, MARKER
from spawnflow.virt.inventory import HostResource
from spawnflow.virt.secrets import usage_id
from spawnflow.virt.vif.base import tap_alias
from tests.unit.conftest import new_build, run_build

HOST = "cmp-1"


def _id() -> str:
    return str(uuid.uuid4())


def test_markers_read_back_what_the_steps_write() -> None:
    instance, part, build = _id(), _id(), _id()
    assert inventory.parse_tap_alias(tap_alias(instance, part, build)) == (instance, part, build)
    assert inventory.parse_usage(usage_id(instance, part, build)) == (instance, part, build)
    name = filter_name(instance, "fa:16:3e:00:11:22", build)
    assert inventory.parse_filter(name) == (instance, "fa163e001122", build)
    for alias in (None, "", "spawnflow:a:b", "other:a:b:c", "spawnflow::b:c"):
        assert inventory.parse_tap_alias(alias) is None
    for usage in (None, "ceph/x", "spawnflow/a/b", "spawnflow//b/c"):
        assert inventory.parse_usage(usage) is None
    for name in ("clean-traffic", "spawnflow-x", f"spawnflow-{instance}-zz-{build}"):
        assert inventory.parse_filter(name) is None
    assert {"clean-traffic", "no-mac-spoofing"} <= inventory.STOCK_FILTERS


def _moved(log: EventLog, states: list[str], **build: str) -> str:
    build_id = new_build(log, **build)
    for state in states:
        log.transition_build(build_id, state)
    return build_id


def test_a_marker_is_judged_by_the_state_of_the_build_it_names(log: EventLog, url: str) -> None:
    active = run_build(log)
    gone = _moved(log, [lifecycle.REVERTING, lifecycle.ROLLED_BACK])
    failed = _moved(log, [lifecycle.RUNNING, lifecycle.REVERTING, lifecycle.FAILED])
    running = _moved(log, [lifecycle.RUNNING])
    elsewhere = _moved(log, [lifecycle.REVERTING, lifecycle.ROLLED_BACK], host="cmp-2")
    busy_instance = _id()
    old = _moved(log, [lifecycle.REVERTING, lifecycle.ROLLED_BACK], instance=busy_instance)
    new_build(log, instance=busy_instance)  # QUEUED: the instance is being built again
    with History.open(url) as history:
        seen = HostBuilds.read(history, HOST)
        instance_of = {b: seen.builds[b].instance_uuid for b in seen.builds}

        def status(build_id: str | None, instance: str | None = None) -> tuple[str, bool]:
            resource = HostResource("tap", "tapx", build_id, instance or instance_of.get(build_id))
            found = seen.classify(resource)
            return found.status, found.unknown

    assert status(active) == ("ok", False)
    assert status(gone) == ("orphan", False)
    assert status(failed) == ("leftover", False)
    assert status(running) == ("unfinished", False)
    assert status(elsewhere, _id()) == ("orphan", True)  # no build of this host
    assert status(_id(), _id()) == ("orphan", True)  # no build at all
    assert status(old) == ("unfinished", False)  # its instance has an unfinished build
    assert status(None) == ("foreign", False)


def test_what_an_active_build_made_comes_from_its_steps_results(log: EventLog, url: str) -> None:
    results = {
        "image": {"instance_dir": "/srv/i/x", "base_path": "/srv/i/_base/" + "a" * 64},
        "vifs": {
            "plugged": [
                {"vif_id": "p1", "tap": "tapp1", "created_tap": True, "created_bridge": False},
                {"vif_id": "p2", "tap": "tapp2", "created_tap": False, "created_bridge": True},
            ]
        },
        "firewall": ["spawnflow-filter"],
    }
    active = run_build(log, results=results)
    queued = new_build(log)  # no image recorded, no checksum in its spec
    with History.open(url) as history:
        build = history.build(active)
        seen = HostBuilds.read(history, HOST)
    assert expected(build) == [
        ("instance_dir", "/srv/i/x"),
        ("tap", "tapp1"),  # the bridge driver's tap is libvirt's
        ("nwfilter", "spawnflow-filter"),
    ]
    used, note = used_images(seen)
    assert used == {"a" * 64}
    assert note is not None and queued in note  # no entry may go while it may need one


def test_the_diagnosis_says_what_the_last_audit_of_its_host_found_missing(
    log: EventLog, url: str
) -> None:
    build_id = run_build(log)

    def found(host: str, missing: dict[str, list[str]]) -> None:
        with log.transaction() as conn:
            log.append(
                conn,
                kind=AUDIT,
                build_id=None,
                subject=None,
                name=host,
                to_state=FOUND,
                payload={"missing": missing},
            )

    def text() -> str:
        with History.open(url) as history:
            return history.build(build_id).diagnose().text

    assert "the host has no" not in text()
    found(HOST, {build_id: ["tap tap123", "domain abc"]})
    found("cmp-2", {})  # another host's audit says nothing about this build
    assert "the host has no tap tap123, no domain abc for this ACTIVE instance (host audit at" in (
        text()
    )
    found(HOST, {})  # the next audit found it all there
    assert "the host has no" not in text()


def test_instance_directories_are_told_by_their_markers(tmp_path: Path) -> None:
    build = _id()
    made = tmp_path / _id()
    made.mkdir()
    (made / MARKER).write_text(build)
    disk_only = tmp_path / _id()
    disk_only.mkdir()
    (disk_only / DISK_MARKER).write_text(build)
    staging = tmp_path / f".{_id()}.{build}.tmp"
    staging.mkdir()
    (tmp_path / "by-hand").mkdir()
    (tmp_path / "_base").mkdir()
    found = {Path(r.name).name: r for r in inventory_files.instance_dirs(str(tmp_path))}
    assert set(found) == {made.name, disk_only.name, staging.name, "by-hand"}
    assert (found[made.name].build_id, found[made.name].part) == (build, None)
    assert found[disk_only.name].part == inventory_files.DISK_ONLY
    assert found[staging.name].part == inventory_files.STAGING
    assert found["by-hand"].build_id is None
    for name in (made.name, staging.name):
        assert inventory_files.remove_instance_dir(found[name])
    assert not made.exists() and not staging.exists()


def test_a_cache_entry_goes_only_unused_unlocked_and_old(tmp_path: Path) -> None:
    base, locks = tmp_path / "_base", tmp_path / "locks"
    base.mkdir()
    old = time.time() - 2 * 86400
    paths = []
    for digest in ("a" * 64, "b" * 64):
        path = base / digest
        path.write_bytes(b"image")
        os.utime(path, (old, old))
        paths.append(path)
    (base / "not-a-digest").write_bytes(b"x")
    entries = inventory_files.cache_entries(str(base))
    assert [e.digest for e in entries] == ["a" * 64, "b" * 64]
    locks.mkdir()
    held = os.open(locks / ("a" * 64 + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)  # a fetch or lookup of that image runs
        since = time.time() - 86400
        assert not inventory_files.remove_entry(entries[0], str(locks), since)
        inventory_files.mark_used(entries[1])  # an audit saw it used meanwhile
        assert not inventory_files.remove_entry(entries[1], str(locks), since)
    finally:
        os.close(held)
    assert inventory_files.remove_entry(entries[0], str(locks), since)
    assert not paths[0].exists() and paths[1].exists()


def test_a_partial_download_goes_unless_a_fetch_writes_it(tmp_path: Path) -> None:
    base, locks = tmp_path / "_base", tmp_path / "locks"
    base.mkdir()
    locks.mkdir()
    part = base / ("c" * 64 + ".part")
    part.write_bytes(b"half")
    held = os.open(locks / ("c" * 64 + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        (found,) = inventory_files.partials(str(base), str(locks))
        assert found.detail == "being written"
        assert not inventory_files.remove_partial(str(part), str(locks))
    finally:
        os.close(held)
    (found,) = inventory_files.partials(str(base), str(locks))
    assert found.detail == "left by a fetch that died"
    assert inventory_files.remove_partial(str(part), str(locks)) and not part.exists()


@pytest.mark.parametrize(("group", "option", "default"), [("audit", "interval", 600)])
def test_audit_options(group: str, option: str, default: int) -> None:
    conf = spawnflow.conf.load([])
    assert getattr(getattr(conf, group), option) == default
    assert conf.images.cache_max_age == 86400
