"""Volume connectors against real files, a loop device and built guest disks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from dataclasses import asdict

import pytest
from lxml import etree

from spawnflow.exceptions import VolumeError
from spawnflow.virt.guest_config import DiskEncryption
from spawnflow.virt.volumes import Connection, VolumeConnector, VolumePolicy, VolumeSpec
from spawnflow.virt.volumes.iscsi import IscsiConnector
from spawnflow.virt.volumes.local import LUKS_MAGIC, LocalConnector
from spawnflow.virt.volumes.rbd import RbdConnector

VOL = "0b5e1a9c-3f52-4b8e-9c1d-2a7e5f3b9d10"
SECRET = "5d8f2c1e-7a34-4e0b-8f6d-9c2b1a0e3f47"

needs_qemu_img = pytest.mark.skipif(
    shutil.which("qemu-img") is None, reason="qemu-img is not installed"
)


def _qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def _xml(disk) -> str:
    return etree.tostring(disk.to_element()).decode()


def _local(path: str) -> VolumeSpec:
    return VolumeSpec(id=VOL, driver="local", device="vdb", path=path)


def _allowing(*entries) -> LocalConnector:
    """A local connector whose [volumes] allowed_paths are ``entries``."""
    return LocalConnector(VolumePolicy(allowed_paths=tuple(str(e) for e in entries)))


# --- local -----------------------------------------------------------------


@needs_qemu_img
def test_local_raw_file(tmp_path):
    path = str(tmp_path / "v.raw")
    _qemu_img("create", "-f", "raw", path, "1M")

    conn = _allowing(tmp_path).connect(_local(path))

    assert conn == Connection(
        volume_id=VOL,
        driver="local",
        source_type="file",
        path=path,
        protocol=None,
        name=None,
        hosts=[],
        driver_format="raw",
    )


@needs_qemu_img
def test_local_qcow2_file(tmp_path):
    path = str(tmp_path / "v.qcow2")
    _qemu_img("create", "-f", "qcow2", path, "1M")

    conn = _allowing(tmp_path).connect(_local(path))

    assert (conn.source_type, conn.driver_format) == ("file", "qcow2")


@needs_qemu_img
def test_local_qcow2_with_backing_file_is_refused(tmp_path):
    base = str(tmp_path / "base.qcow2")
    top = str(tmp_path / "top.qcow2")
    _qemu_img("create", "-f", "qcow2", base, "1M")
    _qemu_img("create", "-f", "qcow2", "-b", base, "-F", "qcow2", top)

    with pytest.raises(VolumeError, match=f"{VOL}.*backing file"):
        _allowing(tmp_path).connect(_local(top))


@needs_qemu_img
def test_local_qcow2_with_data_file_is_refused(tmp_path):
    data = str(tmp_path / "data.raw")
    path = str(tmp_path / "v.qcow2")
    _qemu_img("create", "-f", "qcow2", "-o", f"data_file={data}", path, "1M")

    with pytest.raises(VolumeError, match="external data file"):
        _allowing(tmp_path).connect(_local(path))


def test_local_luks_file_is_raw(tmp_path):
    path = tmp_path / "v.luks"
    path.write_bytes(LUKS_MAGIC + b"\x00\x02" + b"\x00" * 4090)

    conn = _allowing(tmp_path).connect(_local(str(path)))

    assert conn.driver_format == "raw"


def test_local_short_or_empty_file_is_raw(tmp_path):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    short = tmp_path / "short"
    short.write_bytes(b"QF")
    assert _allowing(tmp_path).connect(_local(str(empty))).driver_format == "raw"
    assert _allowing(tmp_path).connect(_local(str(short))).driver_format == "raw"


@pytest.fixture
def loop_device(tmp_path):
    if shutil.which("losetup") is None or os.geteuid() != 0:
        pytest.skip("losetup and root are needed for a loop device")
    backing = tmp_path / "loop.img"
    backing.write_bytes(b"QFI\xfb" + b"\x00" * (1024 * 1024 - 4))  # a qcow2 magic, even
    proc = subprocess.run(
        ["losetup", "-f", "--show", str(backing)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot set up a loop device: {proc.stderr.strip()}")
    device = proc.stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], check=False)


def test_local_block_device_is_raw(loop_device):
    conn = _allowing("/dev/loop*").connect(_local(loop_device))

    # Block devices are never probed: always raw.
    assert (conn.source_type, conn.path, conn.driver_format) == ("block", loop_device, "raw")
    disk = LocalConnector().guest_disk(conn, "vdb", "virtio")
    assert f'<source dev="{loop_device}"/>' in _xml(disk)


def test_local_missing_path_names_volume_and_path(tmp_path):
    path = str(tmp_path / "nope")
    with pytest.raises(VolumeError, match=f"{VOL}.*{path}.*does not exist"):
        _allowing(tmp_path).connect(_local(path))


def test_local_rejects_missing_relative_and_odd_paths(tmp_path):
    with pytest.raises(VolumeError, match="'path'"):
        _allowing(tmp_path).connect(_local(None))
    with pytest.raises(VolumeError, match="not absolute"):
        _allowing(tmp_path).connect(_local("relative/v.raw"))
    (tmp_path / "dir").mkdir()
    with pytest.raises(VolumeError, match="is a directory; a local volume must be"):
        _allowing(tmp_path).connect(_local(str(tmp_path / "dir")))


# --- local: the allow list, checked again at connect time -----------------------


def test_local_connector_without_a_policy_reaches_nothing(tmp_path):
    path = tmp_path / "v.raw"
    path.write_bytes(bytes(512))
    with pytest.raises(VolumeError, match=r"outside \[volumes\] allowed_paths \(empty"):
        LocalConnector().connect(_local(str(path)))


def test_local_connect_refuses_a_path_outside_the_list(tmp_path):
    allowed = tmp_path / "vols"
    allowed.mkdir()
    other = tmp_path / "other.raw"
    other.write_bytes(bytes(512))
    with pytest.raises(VolumeError, match=f"{VOL}: path .*other.raw.* is outside"):
        _allowing(allowed).connect(_local(str(other)))


def test_local_connect_gives_qemu_the_resolved_path(tmp_path):
    # A link inside the allowed directory to a file inside it: the domain gets
    # the file itself, so swapping the link later changes nothing.
    (tmp_path / "real.raw").write_bytes(bytes(512))
    os.symlink(tmp_path / "real.raw", tmp_path / "link.raw")
    conn = _allowing(tmp_path).connect(_local(str(tmp_path / "link.raw")))
    assert conn.path == str(tmp_path / "real.raw")


def test_local_connect_refuses_a_link_swapped_out_of_the_list(tmp_path):
    # Allowed when the spec was checked; a link to /etc/shadow by the time of connect.
    allowed = tmp_path / "vols"
    allowed.mkdir()
    volume = allowed / "v.raw"
    volume.write_bytes(bytes(512))
    connector = _allowing(allowed)
    connector.connect(_local(str(volume)))
    volume.unlink()
    os.symlink("/etc/shadow", volume)
    with pytest.raises(VolumeError, match=r"resolves to '/etc/shadow'.*outside"):
        connector.connect(_local(str(volume)))


def test_local_connect_refuses_state_path_even_when_listed(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "spawnflow.sqlite").write_bytes(bytes(512))
    connector = LocalConnector(
        VolumePolicy(allowed_paths=(str(tmp_path),), forbidden=(("state_path", str(state)),))
    )
    with pytest.raises(VolumeError, match=r"inside state_path .* may never reach"):
        connector.connect(_local(str(state / "spawnflow.sqlite")))


def test_local_header_read_never_blocks_on_a_fifo(tmp_path):
    # A FIFO swapped in between the type check and the open: open_beneath
    # refuses it without blocking (opening a FIFO for reading would wait for
    # a writer forever).
    from spawnflow.virt.volumes.local import detect_format

    fifo = tmp_path / "v.raw"
    os.mkfifo(fifo)
    with pytest.raises(VolumeError, match=r"cannot open .*not a regular file"):
        detect_format(VOL, str(fifo), str(tmp_path))


def test_local_disconnect_leaves_the_file(tmp_path):
    path = tmp_path / "v.raw"
    path.write_bytes(b"\x00" * 512)
    volume = _local(str(path))
    connector = _allowing(tmp_path)
    conn = connector.connect(volume)

    connector.disconnect(volume, conn)
    connector.disconnect(volume, conn)

    assert path.exists()


@needs_qemu_img
def test_local_guest_disk_file_with_encryption(tmp_path):
    path = str(tmp_path / "v.raw")
    _qemu_img("create", "-f", "raw", path, "1M")
    conn = _allowing(tmp_path).connect(_local(path))

    disk = LocalConnector().guest_disk(conn, "vdb", "virtio", encryption=DiskEncryption(SECRET))

    assert (disk.source_type, disk.source_path, disk.driver_format, disk.serial) == (
        "file",
        path,
        "raw",
        VOL,
    )
    xml = _xml(disk)
    assert f'<source file="{path}"/>' in xml
    assert '<target dev="vdb" bus="virtio"/>' in xml
    assert '<encryption format="luks">' in xml
    assert f"<serial>{VOL}</serial>" in xml


# --- iscsi -----------------------------------------------------------------


def _iscsi(**kw) -> VolumeSpec:
    fields = {
        "id": VOL,
        "driver": "iscsi",
        "device": "vdc",
        "portal": "192.0.2.10:3261",
        "iqn": "iqn.2010-10.org.openstack:volume-1",
        "lun": 0,
    }
    fields.update(kw)
    return VolumeSpec(**fields)


def test_iscsi_connection_and_disk():
    conn = IscsiConnector().connect(_iscsi(auth_username="chap", auth_secret_uuid=SECRET))

    assert conn == Connection(
        volume_id=VOL,
        driver="iscsi",
        source_type="network",
        path=None,
        protocol="iscsi",
        name="iqn.2010-10.org.openstack:volume-1/0",
        hosts=[("192.0.2.10", 3261)],
        driver_format="raw",
        auth_username="chap",
        auth_secret_type="iscsi",
        auth_secret_uuid=SECRET,
    )
    xml = _xml(IscsiConnector().guest_disk(conn, "vdc", "virtio"))
    assert '<disk type="network" device="disk">' in xml
    assert 'protocol="iscsi" name="iqn.2010-10.org.openstack:volume-1/0"' in xml
    assert '<host name="192.0.2.10" port="3261"/>' in xml
    assert f'<auth username="chap"><secret type="iscsi" uuid="{SECRET}"/></auth>' in xml


@pytest.mark.parametrize(
    "portal, host",
    [
        ("192.0.2.10", ("192.0.2.10", 3260)),
        ("storage.example.org:3262", ("storage.example.org", 3262)),
        ("[2001:db8::1]:3263", ("2001:db8::1", 3263)),
        ("[2001:db8::1]", ("2001:db8::1", 3260)),
        ("2001:db8::1", ("2001:db8::1", 3260)),
    ],
)
def test_iscsi_portal_forms(portal, host):
    assert IscsiConnector().connect(_iscsi(portal=portal)).hosts == [host]


def test_iscsi_without_auth_has_no_secret():
    conn = IscsiConnector().connect(_iscsi())
    assert (conn.auth_username, conn.auth_secret_type, conn.auth_secret_uuid) == (None,) * 3
    assert "<auth" not in _xml(IscsiConnector().guest_disk(conn, "sdb", "scsi"))


@pytest.mark.parametrize("missing", ["portal", "iqn", "lun"])
def test_iscsi_missing_field_is_named(missing):
    with pytest.raises(VolumeError, match=f"{VOL}.*'{missing}'"):
        IscsiConnector().connect(_iscsi(**{missing: None}))


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"portal": "host:port"}, "invalid port"),
        ({"portal": "host:70000"}, "invalid port"),
        ({"portal": ":3260"}, "no host"),
        ({"lun": -1}, "lun"),
        ({"lun": True}, "lun"),
        ({"iqn": "iqn.x/evil"}, "must not contain"),
        ({"auth_username": "chap"}, "auth_secret_uuid is not"),
        ({"auth_secret_uuid": SECRET}, "auth_username is not"),
    ],
)
def test_iscsi_bad_fields_rejected(kw, match):
    with pytest.raises(VolumeError, match=match):
        IscsiConnector().connect(_iscsi(**kw))


# --- rbd -------------------------------------------------------------------


def _rbd(**kw) -> VolumeSpec:
    fields = {
        "id": VOL,
        "driver": "rbd",
        "device": "vdd",
        "pool": "volumes",
        "image": f"volume-{VOL}",
        "hosts": ["192.0.2.1", "192.0.2.2:6790", "[2001:db8::2]"],
    }
    fields.update(kw)
    return VolumeSpec(**fields)


def test_rbd_connection_and_disk():
    conn = RbdConnector().connect(_rbd(auth_username="cinder", auth_secret_uuid=SECRET))

    assert conn.hosts == [("192.0.2.1", 6789), ("192.0.2.2", 6790), ("2001:db8::2", 6789)]
    assert (conn.source_type, conn.protocol, conn.name, conn.driver_format) == (
        "network",
        "rbd",
        f"volumes/volume-{VOL}",
        "raw",
    )
    assert (conn.auth_username, conn.auth_secret_type, conn.auth_secret_uuid) == (
        "cinder",
        "ceph",
        SECRET,
    )
    disk = RbdConnector().guest_disk(conn, "vdd", "virtio")
    xml = _xml(disk)
    assert f'protocol="rbd" name="volumes/volume-{VOL}"' in xml
    assert '<host name="192.0.2.2" port="6790"/>' in xml
    assert '<host name="2001:db8::2" port="6789"/>' in xml
    assert f'<secret type="ceph" uuid="{SECRET}"/>' in xml


def test_rbd_without_hosts_uses_ceph_conf():
    conn = RbdConnector().connect(_rbd(hosts=[]))
    assert conn.hosts == []
    assert "<host" not in _xml(RbdConnector().guest_disk(conn, "vdd", "virtio"))


@pytest.mark.parametrize("missing", ["pool", "image"])
def test_rbd_missing_field_is_named(missing):
    with pytest.raises(VolumeError, match=f"{VOL}.*'{missing}'"):
        RbdConnector().connect(_rbd(**{missing: None}))


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"pool": "a/b"}, "pool 'a/b' must not contain"),
        ({"image": "img@snap"}, "image 'img@snap' must not contain"),
        ({"hosts": ["mon:0"]}, "invalid port"),
        ({"auth_username": "cinder"}, "auth_secret_uuid is not"),
    ],
)
def test_rbd_bad_fields_rejected(kw, match):
    with pytest.raises(VolumeError, match=match):
        RbdConnector().connect(_rbd(**kw))


# --- shared ----------------------------------------------------------------


def test_connection_round_trips_through_json():
    conn = RbdConnector().connect(_rbd(auth_username="cinder", auth_secret_uuid=SECRET))
    assert Connection.from_dict(json.loads(json.dumps(asdict(conn)))) == conn


def test_guest_disk_errors_are_volume_errors():
    conn = IscsiConnector().connect(_iscsi())
    with pytest.raises(VolumeError, match=f"{VOL}.*target_dev"):
        IscsiConnector().guest_disk(conn, "sdb", "virtio")  # virtio disks are vdX


def test_network_disconnect_is_a_no_op():
    for connector, volume in ((IscsiConnector(), _iscsi()), (RbdConnector(), _rbd())):
        conn = connector.connect(volume)
        connector.disconnect(volume, conn)
        connector.disconnect(volume, conn)


def test_load_connector_through_stevedore():
    # Needs the spawnflow.volume_connectors entry points (setup.cfg) to be installed.
    assert isinstance(VolumeConnector.load("local"), LocalConnector)
    assert isinstance(VolumeConnector.load("iscsi"), IscsiConnector)
    assert isinstance(VolumeConnector.load("rbd"), RbdConnector)


def test_load_connector_unknown_driver_names_it():
    with pytest.raises(VolumeError, match="unknown volume driver 'nfs'"):
        VolumeConnector.load("nfs")


def test_connect_is_repeatable(tmp_path):
    # A re-run after a crash must get the same answer and change nothing.
    path = tmp_path / "v.raw"
    path.write_bytes(b"\x00" * 512)
    volume = _local(str(path))
    assert _allowing(tmp_path).connect(volume) == _allowing(tmp_path).connect(volume)
    assert IscsiConnector().connect(_iscsi()) == IscsiConnector().connect(_iscsi())


def test_serial_is_the_volume_id():
    # Like nova, so the guest finds the disk under /dev/disk/by-id.
    other = str(uuid.uuid4())
    conn = RbdConnector().connect(_rbd(id=other))
    assert RbdConnector().guest_disk(conn, "vde", "virtio").serial == other
