"""The two-call crash windows of issue 14 (must-have 8), closed on the real host.

A process killed between making a resource and tagging it as this build's
used to leave an untagged resource: an instance directory without its marker,
a tap without its alias. Each test stops the primitive at that point (the
second call raises an exception no step catches, as a kill would leave it),
then re-runs or reverts as the next agent would, and checks nothing untagged
is left and the re-run adopts what is its own.
"""

from __future__ import annotations

import builtins
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from spawnflow.flows.context import BuildContext
from spawnflow.flows.image import ImageStep
from spawnflow.flows.spec import parse_spec
from spawnflow.virt import marked_dir
from spawnflow.virt.images import CachePolicy, FetchResult, ImageCache
from spawnflow.virt.instance_files import MARKER
from spawnflow.virt.vif import tap as tap_mod
from spawnflow.virt.vif.base import PlugResult, Vif, tap_alias, tap_name
from spawnflow.virt.vif.netlink import delete_link, get_link
from tests.helpers import load_conf

pytestmark = pytest.mark.integration

BUILD = "b-crash-1"
INSTANCE = "6f1c2a7e-4a57-4f0e-9a49-3d0f7c0d1a02"


class Killed(BaseException):
    """Stands for a kill -9: nothing in a step catches it."""


# --- the instance directory and its marker ----------------------------------------


def _image_step(tmp_path: Path) -> ImageStep:
    spec = parse_spec(
        {
            "instance": {"uuid": INSTANCE, "name": "vm"},
            "flavor": {"vcpus": 1, "memory_mb": 64, "root_gb": 0},
            "image": {"source": str(tmp_path / "base.raw"), "disk_format": "raw"},
        }
    )
    cache = ImageCache(str(tmp_path / "_base"), str(tmp_path / "locks"), CachePolicy())
    ctx = BuildContext(
        build_id=BUILD,
        spec=spec,
        conf=load_conf(tmp_path),
        host=None,
        images=cache,
        firewall=None,
        events=None,
        instances_path=str(tmp_path / "instances"),
    )
    step = ImageStep(ctx)
    base = tmp_path / "base.raw"
    base.write_bytes(b"\0" * 65536)
    # The fetch is not what is under test: the base is already "cached".
    step._fetch = lambda: FetchResult(path=str(base), downloaded=False)  # type: ignore[method-assign]
    return step


def _kill_at_marker_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kill the step when it opens the directory's marker to write it, once."""
    real_open = builtins.open
    fired: list[bool] = []

    def opener(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if str(file).endswith(os.sep + MARKER) and "w" in mode and not fired:
            fired.append(True)
            raise Killed
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", opener)


def test_killed_before_the_marker_leaves_no_unmarked_directory(tmp_path, monkeypatch):
    step = _image_step(tmp_path)
    _kill_at_marker_write(monkeypatch)
    with pytest.raises(Killed):
        step.execute()
    instances = tmp_path / "instances"
    # The directory never appears under its name without its marker.
    assert not (instances / INSTANCE).exists()
    step.revert(result=None)
    assert os.listdir(instances) == []


def test_rerun_after_the_kill_makes_and_owns_the_directory(tmp_path, monkeypatch):
    step = _image_step(tmp_path)
    _kill_at_marker_write(monkeypatch)
    with pytest.raises(Killed):
        step.execute()
    monkeypatch.undo()
    result = step.execute()
    instances = tmp_path / "instances"
    assert result["created_dir"] is True
    assert os.listdir(instances) == [INSTANCE]  # the staging directory is gone
    assert (instances / INSTANCE / MARKER).read_text() == BUILD
    step.revert(result=result)
    assert os.listdir(instances) == []


def test_agent_start_removes_only_staging_directories(tmp_path, monkeypatch):
    step = _image_step(tmp_path)
    _kill_at_marker_write(monkeypatch)
    with pytest.raises(Killed):
        step.execute()
    monkeypatch.undo()
    instances = tmp_path / "instances"
    foreign = instances / ".someone.else.tmp"
    foreign.mkdir()
    (foreign / "data").write_text("not ours")
    removed = marked_dir.clean_staging(str(instances), MARKER)
    assert removed == [marked_dir.staging_path(str(instances / INSTANCE), BUILD)]
    assert sorted(os.listdir(instances)) == [".someone.else.tmp"]


def test_a_directory_made_meanwhile_is_never_claimed(tmp_path, monkeypatch):
    """Someone makes the (empty) directory between our staging and our rename."""
    target = tmp_path / "instances" / INSTANCE
    real_fsync_dir = marked_dir._fsync_dir

    def racing_fsync_dir(path: str) -> None:
        real_fsync_dir(path)
        if path.endswith(".tmp"):
            target.mkdir()

    monkeypatch.setattr(marked_dir, "_fsync_dir", racing_fsync_dir)
    assert marked_dir.make_marked_dir(str(target), MARKER, BUILD) is False
    assert os.listdir(target) == []  # not marked as ours
    assert os.listdir(target.parent) == [INSTANCE]  # the staging directory is gone


# --- the tap and its alias -----------------------------------------------------------


@pytest.fixture
def port() -> Any:
    vif = Vif(id=str(uuid.uuid4()), mac="fa:16:3e:00:00:01", type="tap")
    alias = tap_alias(INSTANCE, vif.id, BUILD)
    names = [tap_name(vif.id), tap_mod.staging_tap_name(alias)]
    yield vif
    with IPRoute() as ipr:
        for name in names:
            link = get_link(ipr, name)
            if link is not None:
                delete_link(ipr, link["index"])


def _kill_at_set(monkeypatch: pytest.MonkeyPatch, attribute: str) -> None:
    """Kill the plug at its first ``link("set", <attribute>=...)`` request."""

    class KilledIPRoute:
        """A real IPRoute whose ``link`` request of that kind never happens."""

        def __init__(self) -> None:
            self._ipr = IPRoute()

        def __enter__(self) -> KilledIPRoute:
            return self

        def __exit__(self, *exc: object) -> None:
            self._ipr.close()

        def __getattr__(self, name: str) -> Any:
            return getattr(self._ipr, name)

        def link(self, command: str, **kwargs: Any) -> Any:
            if command == "set" and attribute in kwargs:
                raise Killed
            return self._ipr.link(command, **kwargs)

    monkeypatch.setattr(tap_mod, "IPRoute", KilledIPRoute)


def _link(name: str) -> Any:
    with IPRoute() as ipr:
        return get_link(ipr, name)


def test_killed_before_the_alias_rerun_adopts_nothing_untagged(port, monkeypatch):
    driver = tap_mod.TapVifDriver()
    _kill_at_set(monkeypatch, "ifalias")
    with pytest.raises(Killed):
        driver.plug(port, INSTANCE, BUILD)
    monkeypatch.undo()
    tap = tap_name(port.id)
    assert _link(tap) is None  # no untagged device under the final name
    result = driver.plug(port, INSTANCE, BUILD)
    assert _link(tap).get("IFLA_IFALIAS") == tap_alias(INSTANCE, port.id, BUILD)
    staging = tap_mod.staging_tap_name(tap_alias(INSTANCE, port.id, BUILD))
    assert _link(staging) is None
    driver.unplug(port, result, INSTANCE, BUILD)
    assert _link(tap) is None


def test_killed_before_the_rename_revert_leaves_nothing(port, monkeypatch):
    driver = tap_mod.TapVifDriver()
    _kill_at_set(monkeypatch, "ifname")
    with pytest.raises(Killed):
        driver.plug(port, INSTANCE, BUILD)
    monkeypatch.undo()
    tap = tap_name(port.id)
    staging = tap_mod.staging_tap_name(tap_alias(INSTANCE, port.id, BUILD))
    assert _link(tap) is None and _link(staging) is not None
    # A revert without a recorded result, as after a crash.
    driver.unplug(port, PlugResult(port.id, tap, True, False), INSTANCE, BUILD)
    assert _link(tap) is None and _link(staging) is None


def test_a_staging_tap_of_another_build_is_left_alone(port):
    other = tap_alias(INSTANCE, port.id, "b-other")
    with IPRoute() as ipr:
        # Another build's staging name, tagged: even under our name, not ours.
        mine = tap_mod.staging_tap_name(tap_alias(INSTANCE, port.id, BUILD))
        ipr.link("add", ifname=mine, kind="tuntap", mode="tap", ifr={"no_pi": 1})
        link = get_link(ipr, mine)
        ipr.link("set", index=link["index"], ifalias=other)
        assert tap_mod.remove_staging_tap(ipr, tap_alias(INSTANCE, port.id, BUILD)) is False
        assert get_link(ipr, mine) is not None
