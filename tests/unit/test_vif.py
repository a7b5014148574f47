"""VIF drivers against real Linux bridges and taps (needs CAP_NET_ADMIN)."""

from __future__ import annotations

import fcntl
import json
import os
import struct
import uuid
from dataclasses import asdict

import pytest
from lxml import etree
from pyroute2 import IPRoute

from spawnflow.exceptions import VifError
from spawnflow.virt.guest_config import FilterRef
from spawnflow.virt.vif.base import PlugResult, Vif, VifDriver, tap_name
from spawnflow.virt.vif.bridge import BridgeVifDriver
from spawnflow.virt.vif.netlink import tap_exists
from spawnflow.virt.vif.tap import TapVifDriver

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/net/tun"),
    reason="needs root and /dev/net/tun to create bridges and taps",
)

MAC = "fa:16:3e:00:00:01"
BUILD = "0b0b0000-0000-4000-8000-00000000000b"
OTHER_BUILD = "0b0b0000-0000-4000-8000-00000000000c"


def _link(name: str):
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)
        return ipr.get_links(idx[0])[0] if idx else None


def _kind(link) -> str | None:
    info = link.get("IFLA_LINKINFO")
    return info.get("IFLA_INFO_KIND") if info else None


def _delete(name: str) -> None:
    with IPRoute() as ipr:
        for idx in ipr.link_lookup(ifname=name):
            ipr.link("del", index=idx)


@pytest.fixture
def devices():
    """Names of devices a test may create; every one is deleted afterwards."""
    names: list[str] = []
    try:
        yield names
    finally:
        # Taps before bridges, so nothing is left enslaved; ignore "not there".
        for name in sorted(names, key=lambda n: not n.startswith("tap")):
            _delete(name)
        leaked = [n for n in names if tap_exists(n)]
        assert not leaked, f"devices leaked: {leaked}"


@pytest.fixture
def bridge_name(devices) -> str:
    name = "sfb" + uuid.uuid4().hex[:8]
    devices.append(name)
    return name


@pytest.fixture
def vif_id(devices) -> str:
    value = str(uuid.uuid4())
    devices.append(tap_name(value))
    return value


@pytest.fixture
def instance_uuid() -> str:
    return str(uuid.uuid4())


def _make_foreign_tap(name: str, alias: str | None = None) -> None:
    with IPRoute() as ipr:
        ipr.link("add", ifname=name, kind="tuntap", mode="tap")
        if alias:
            ipr.link("set", index=ipr.link_lookup(ifname=name)[0], ifalias=alias)


# --- names -----------------------------------------------------------------


@pytest.mark.parametrize("vid", [str(uuid.uuid4()) for _ in range(3)] + ["x", "a" * 40])
def test_tap_name_like_nova_and_fits_ifnamsiz(vid):
    name = tap_name(vid)
    assert name == "tap" + vid[:11]
    assert len(name) <= 15


# --- bridge driver ---------------------------------------------------------


def test_bridge_plug_creates_missing_bridge_up_with_mtu(bridge_name, vif_id, instance_uuid):
    vif = Vif(id=vif_id, mac=MAC, type="bridge", bridge=bridge_name, mtu=1400)
    assert not tap_exists(bridge_name)

    result = BridgeVifDriver().plug(vif, instance_uuid, BUILD)

    assert result == PlugResult(
        vif_id=vif_id, tap=tap_name(vif_id), created_tap=False, created_bridge=True
    )
    link = _link(bridge_name)
    assert _kind(link) == "bridge"
    assert link["flags"] & 1  # IFF_UP
    assert link.get("IFLA_MTU") == 1400
    # libvirt creates the tap when the domain starts, not plug().
    assert not tap_exists(result.tap)


def test_bridge_plug_twice_is_idempotent(bridge_name, vif_id, instance_uuid):
    vif = Vif(id=vif_id, mac=MAC, type="bridge", bridge=bridge_name, mtu=None)
    driver = BridgeVifDriver()
    first = driver.plug(vif, instance_uuid, BUILD)
    index = _link(bridge_name)["index"]

    second = driver.plug(vif, instance_uuid, BUILD)

    assert first.created_bridge is True
    assert second.created_bridge is False
    assert second.tap == first.tap
    assert _link(bridge_name)["index"] == index  # same device, not re-created


def test_bridge_plug_brings_existing_bridge_up_and_keeps_its_mtu(
    bridge_name, vif_id, instance_uuid
):
    with IPRoute() as ipr:
        ipr.link("add", ifname=bridge_name, kind="bridge")
        ipr.link("set", index=ipr.link_lookup(ifname=bridge_name)[0], mtu=1450)
    vif = Vif(id=vif_id, mac=MAC, type="bridge", bridge=bridge_name, mtu=9000)

    result = BridgeVifDriver().plug(vif, instance_uuid, BUILD)

    assert result.created_bridge is False
    link = _link(bridge_name)
    assert link["flags"] & 1
    assert link.get("IFLA_MTU") == 1450  # a shared bridge's MTU is not ours to change


def test_bridge_unplug_leaves_bridge(bridge_name, vif_id, instance_uuid):
    vif = Vif(id=vif_id, mac=MAC, type="bridge", bridge=bridge_name, mtu=None)
    driver = BridgeVifDriver()
    result = driver.plug(vif, instance_uuid, BUILD)

    driver.unplug(vif, result, instance_uuid, BUILD)
    driver.unplug(vif, result, instance_uuid, BUILD)  # nothing to remove: still fine

    assert _kind(_link(bridge_name)) == "bridge"


def test_bridge_unplug_removes_left_over_tap(bridge_name, vif_id, instance_uuid):
    vif = Vif(id=vif_id, mac=MAC, type="bridge", bridge=bridge_name, mtu=None)
    driver = BridgeVifDriver()
    result = driver.plug(vif, instance_uuid, BUILD)
    _make_foreign_tap(result.tap)  # what libvirt leaves behind if it dies mid-destroy

    driver.unplug(vif, result, instance_uuid, BUILD)

    assert not tap_exists(result.tap)
    assert tap_exists(bridge_name)


def _attach(name: str) -> int:
    """Open the tap like QEMU does (TUNSETIFF); the returned fd keeps it attached."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", name.encode(), 0x0002 | 0x1000))
    return fd


def test_bridge_unplug_keeps_a_tap_in_use(bridge_name, vif_id, instance_uuid):
    """A tap some process holds open is a running domain's (another build's, say)."""
    vif = Vif(id=vif_id, mac=MAC, type="bridge", bridge=bridge_name, mtu=None)
    driver = BridgeVifDriver()
    result = driver.plug(vif, instance_uuid, BUILD)
    _make_foreign_tap(result.tap)
    fd = _attach(result.tap)
    try:
        driver.unplug(vif, result, instance_uuid, BUILD)
        assert tap_exists(result.tap)
    finally:
        os.close(fd)
    driver.unplug(vif, result, instance_uuid, BUILD)  # no longer attached: a left-over
    assert not tap_exists(result.tap)


def test_bridge_unplug_keeps_a_tap_vif_tap(bridge_name, vif_id, instance_uuid):
    vif = Vif(id=vif_id, mac=MAC, type="bridge", bridge=bridge_name, mtu=None)
    result = BridgeVifDriver().plug(vif, instance_uuid, BUILD)
    TapVifDriver().plug(
        Vif(id=vif_id, mac=MAC, type="tap", bridge=None, mtu=None), instance_uuid, OTHER_BUILD
    )

    BridgeVifDriver().unplug(vif, result, instance_uuid, BUILD)

    assert tap_exists(result.tap)


def test_bridge_unplug_keeps_a_non_tap_device_with_the_tap_name(
    devices, bridge_name, vif_id, instance_uuid
):
    vif = Vif(id=vif_id, mac=MAC, type="bridge", bridge=bridge_name, mtu=None)
    result = BridgeVifDriver().plug(vif, instance_uuid, BUILD)
    with IPRoute() as ipr:  # a bridge that happens to carry the tap's name
        ipr.link("add", ifname=result.tap, kind="bridge")

    BridgeVifDriver().unplug(vif, result, instance_uuid, BUILD)

    assert _kind(_link(result.tap)) == "bridge"


def test_bridge_plug_refuses_a_non_bridge_device(devices, vif_id, instance_uuid):
    name = "sft" + uuid.uuid4().hex[:8]
    devices.append(name)
    _make_foreign_tap(name)
    vif = Vif(id=vif_id, mac=MAC, type="bridge", bridge=name, mtu=None)

    with pytest.raises(VifError, match=f"{name}.*not a bridge"):
        BridgeVifDriver().plug(vif, instance_uuid, BUILD)


def test_bridge_plug_rejects_missing_or_long_bridge_name(vif_id, instance_uuid):
    with pytest.raises(VifError, match="needs a bridge name"):
        BridgeVifDriver().plug(
            Vif(id=vif_id, mac=MAC, type="bridge", bridge=None, mtu=None), instance_uuid, BUILD
        )
    with pytest.raises(VifError, match="1 to 15 bytes"):
        BridgeVifDriver().plug(
            Vif(id=vif_id, mac=MAC, type="bridge", bridge="b" * 16, mtu=None), instance_uuid, BUILD
        )


def test_bridge_guest_interface(vif_id):
    vif = Vif(id=vif_id, mac=MAC, type="bridge", bridge="br-int", mtu=1450)
    result = PlugResult(
        vif_id=vif_id, tap=tap_name(vif_id), created_tap=False, created_bridge=False
    )

    iface = BridgeVifDriver().guest_interface(vif, result, filterref=FilterRef("clean-traffic"))

    assert (iface.kind, iface.bridge, iface.target_dev, iface.managed_tap, iface.mtu) == (
        "bridge",
        "br-int",
        tap_name(vif_id),
        True,
        1450,
    )
    xml = etree.tostring(iface.to_element()).decode()
    assert f'<target dev="{tap_name(vif_id)}"/>' in xml
    assert '<source bridge="br-int"/>' in xml
    assert "clean-traffic" in xml


# --- tap driver ------------------------------------------------------------


def test_tap_plug_creates_tap_with_mtu_alias_and_up(vif_id, instance_uuid):
    vif = Vif(id=vif_id, mac=MAC, type="tap", bridge=None, mtu=1400)

    result = TapVifDriver().plug(vif, instance_uuid, BUILD)

    assert result == PlugResult(
        vif_id=vif_id, tap=tap_name(vif_id), created_tap=True, created_bridge=False
    )
    link = _link(result.tap)
    assert _kind(link) == "tun"
    assert link.get("IFLA_MTU") == 1400
    assert link.get("IFLA_IFALIAS") == f"spawnflow:{instance_uuid}:{vif_id}:{BUILD}"
    assert link["flags"] & 1


def test_tap_replug_after_crash_adopts_own_tap(vif_id, instance_uuid):
    vif = Vif(id=vif_id, mac=MAC, type="tap", bridge=None, mtu=1400)
    driver = TapVifDriver()
    driver.plug(vif, instance_uuid, BUILD)  # "crash": this result is never recorded
    index = _link(tap_name(vif_id))["index"]

    result = driver.plug(vif, instance_uuid, BUILD)

    assert result.created_tap is True  # so a revert will remove it
    assert _link(result.tap)["index"] == index


def test_tap_replug_converges_mtu_and_state(vif_id, instance_uuid):
    # Crash after create + tag but before MTU/up: the re-run finishes the job.
    name = tap_name(vif_id)
    _make_foreign_tap(name, alias=f"spawnflow:{instance_uuid}:{vif_id}:{BUILD}")

    TapVifDriver().plug(
        Vif(id=vif_id, mac=MAC, type="tap", bridge=None, mtu=1300), instance_uuid, BUILD
    )

    link = _link(name)
    assert link.get("IFLA_MTU") == 1300
    assert link["flags"] & 1


def test_tap_plug_refuses_foreign_tap_without_alias(vif_id, instance_uuid):
    name = tap_name(vif_id)
    _make_foreign_tap(name)
    vif = Vif(id=vif_id, mac=MAC, type="tap", bridge=None, mtu=1400)

    with pytest.raises(VifError, match=f"{name}.*not created by this build"):
        TapVifDriver().plug(vif, instance_uuid, BUILD)

    link = _link(name)  # untouched
    assert link.get("IFLA_IFALIAS") is None
    assert link.get("IFLA_MTU") == 1500


def test_tap_plug_refuses_tap_of_another_instance(vif_id, instance_uuid):
    vif = Vif(id=vif_id, mac=MAC, type="tap", bridge=None, mtu=None)
    TapVifDriver().plug(vif, str(uuid.uuid4()), BUILD)

    with pytest.raises(VifError, match="refusing"):
        TapVifDriver().plug(vif, instance_uuid, BUILD)


def test_tap_plug_refuses_tap_of_another_build(vif_id, instance_uuid):
    vif = Vif(id=vif_id, mac=MAC, type="tap", bridge=None, mtu=None)
    TapVifDriver().plug(vif, instance_uuid, OTHER_BUILD)

    with pytest.raises(VifError, match="not created by this build"):
        TapVifDriver().plug(vif, instance_uuid, BUILD)


def test_tap_unplug_keeps_the_tap_of_another_build(vif_id, instance_uuid):
    """Build A reverted again after build B of the same instance made the port's tap."""
    vif = Vif(id=vif_id, mac=MAC, type="tap", bridge=None, mtu=None)
    driver = TapVifDriver()
    a_result = driver.plug(vif, instance_uuid, BUILD)
    driver.unplug(vif, a_result, instance_uuid, BUILD)
    driver.plug(vif, instance_uuid, OTHER_BUILD)

    driver.unplug(vif, a_result, instance_uuid, BUILD)

    assert (
        _link(tap_name(vif_id)).get("IFLA_IFALIAS")
        == f"spawnflow:{instance_uuid}:{vif_id}:{OTHER_BUILD}"
    )


def test_tap_plug_refuses_non_tap_device(devices, vif_id, instance_uuid):
    with IPRoute() as ipr:
        ipr.link("add", ifname=tap_name(vif_id), kind="bridge")

    with pytest.raises(VifError, match="not a tap"):
        TapVifDriver().plug(
            Vif(id=vif_id, mac=MAC, type="tap", bridge=None, mtu=None), instance_uuid, BUILD
        )


def test_tap_unplug_removes_and_tolerates_already_gone(vif_id, instance_uuid):
    vif = Vif(id=vif_id, mac=MAC, type="tap", bridge=None, mtu=None)
    driver = TapVifDriver()
    result = driver.plug(vif, instance_uuid, BUILD)

    driver.unplug(vif, result, instance_uuid, BUILD)
    assert not tap_exists(result.tap)
    driver.unplug(vif, result, instance_uuid, BUILD)  # already gone


def test_tap_unplug_keeps_tap_it_did_not_create(vif_id, instance_uuid):
    name = tap_name(vif_id)
    _make_foreign_tap(name)
    vif = Vif(id=vif_id, mac=MAC, type="tap", bridge=None, mtu=None)

    TapVifDriver().unplug(
        vif, PlugResult(vif_id, name, created_tap=False, created_bridge=False), instance_uuid, BUILD
    )
    assert tap_exists(name)
    # created_tap=True but the device there now is not tagged as ours.
    TapVifDriver().unplug(
        vif, PlugResult(vif_id, name, created_tap=True, created_bridge=False), instance_uuid, BUILD
    )
    assert tap_exists(name)


def test_tap_guest_interface_is_unmanaged_ethernet(vif_id):
    vif = Vif(id=vif_id, mac=MAC, type="tap", bridge=None, mtu=1400)
    result = PlugResult(vif_id=vif_id, tap=tap_name(vif_id), created_tap=True, created_bridge=False)

    iface = TapVifDriver().guest_interface(vif, result)

    xml = etree.tostring(iface.to_element()).decode()
    assert '<interface type="ethernet">' in xml
    assert f'<target dev="{tap_name(vif_id)}" managed="no"/>' in xml
    assert '<mtu size="1400"/>' in xml


def test_guest_interface_errors_are_vif_errors(vif_id):
    vif = Vif(id=vif_id, mac="01:00:5e:00:00:01", type="tap", bridge=None, mtu=None)
    result = PlugResult(vif_id, tap_name(vif_id), created_tap=True, created_bridge=False)
    with pytest.raises(VifError, match="multicast"):
        TapVifDriver().guest_interface(vif, result)


def test_plug_result_round_trips_through_json(vif_id):
    result = PlugResult(vif_id, tap_name(vif_id), created_tap=True, created_bridge=False)
    assert PlugResult.from_dict(json.loads(json.dumps(asdict(result)))) == result


def test_plug_result_records_what_the_vifs_step_always_persisted(vif_id):
    result = PlugResult(vif_id, tap_name(vif_id), created_tap=True, created_bridge=False)
    assert result.to_dict() == asdict(result)
    assert list(result.to_dict()) == list(asdict(result))


# --- plugin registry -------------------------------------------------------


def test_load_driver_through_stevedore():
    # Needs the spawnflow.vif_drivers entry points (setup.cfg) to be installed.
    assert isinstance(VifDriver.load("bridge"), BridgeVifDriver)
    assert isinstance(VifDriver.load("tap"), TapVifDriver)


def test_load_driver_unknown_type_names_it():
    with pytest.raises(VifError, match="unknown vif type 'ovs'"):
        VifDriver.load("ovs")


def test_drivers_satisfy_the_interface():
    for cls in (BridgeVifDriver, TapVifDriver):
        assert issubclass(cls, VifDriver)
