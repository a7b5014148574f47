"""Tests for spawnflow.virt.guest_config.

Every document is checked against libvirt's own RelaxNG schema with
``virt-xml-validate`` and, for ``virt_type='test'``, defined on libvirt's
in-memory ``test:///default`` driver.
"""

import dataclasses
import re
import shutil
import subprocess

import libvirt
import pytest
from lxml import etree

from spawnflow.virt.guest_config import (
    METADATA_NS,
    DiskEncryption,
    FilterRef,
    GuestConfig,
    GuestDisk,
    GuestInterface,
    GuestMetadata,
    NetworkDiskHost,
    parse_domain_uuid,
)

UUID = "0f7a2b1c-3d4e-4f50-8a6b-7c8d9e0f1a2b"
SECRET = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
LUKS_SECRET = "11111111-2222-4333-8444-555555555555"
# Every character that would be markup if pasted into XML text or attributes,
# an attempted element injection and non-ASCII; no '/' because domain names may not have one.
NASTY = "a<b'c&d\"e]]>f<evil x='1'>é☃"
FLAVOR = {"vcpus": 2, "memory_mb": 512, "root_gb": 1}
NS = {"sf": METADATA_NS}


def minimal(**overrides) -> GuestConfig:
    kwargs = {
        "virt_type": "qemu",
        "uuid": UUID,
        "name": "instance-00000001",
        "memory_mb": 512,
        "vcpus": 1,
    }
    kwargs.update(overrides)
    return GuestConfig(**kwargs)


def full(virt_type: str = "kvm", name: str = "instance-00000001", odd: str = "x") -> GuestConfig:
    """A document with one of every device kind; ``odd`` is embedded in paths and names."""
    disks = [
        GuestDisk(
            "vda",
            "virtio",
            "file",
            driver_format="qcow2",
            source_path=f"/var/lib/spawnflow/{odd}/disk",
            serial="vol-1",
        ),
        GuestDisk("vdb", "virtio", "block", source_path=f"/dev/mapper/{odd}"),
        GuestDisk(
            "sda",
            "scsi",
            "network",
            source_protocol="iscsi",
            source_name=f"iqn.2010-10.org.openstack:volume-{odd}/1",
            source_hosts=[NetworkDiskHost("192.0.2.10", 3260)],
            auth_username="chap-user",
            auth_secret_type="iscsi",
            auth_secret_uuid=SECRET,
            serial="3f2e1d0c-volume",
        ),
        GuestDisk(
            "vdc",
            "virtio",
            "network",
            source_protocol="rbd",
            source_name=f"volumes/{odd}",
            source_hosts=[
                NetworkDiskHost("mon1.example.org", 6789),
                NetworkDiskHost("192.0.2.11", 6789),
                NetworkDiskHost("2001:db8::1"),
            ],
            auth_username="cinder",
            auth_secret_type="ceph",
            auth_secret_uuid=SECRET,
        ),
        GuestDisk(
            "vdd",
            "virtio",
            "file",
            source_path=f"/srv/{odd}/luks.img",
            encryption=DiskEncryption(LUKS_SECRET),
        ),
        GuestDisk(
            "sdb",
            "sata",
            "file",
            device="cdrom",
            source_path=f"/srv/{odd}/config.iso",
            readonly=True,
        ),
    ]
    interfaces = [
        GuestInterface(
            "bridge",
            "fa:16:3e:00:00:01",
            bridge="br-int",
            mtu=1450,
            filterref=FilterRef(
                "clean-traffic", [("IP", "10.0.0.5"), ("MAC", "fa:16:3e:00:00:01")]
            ),
        ),
        GuestInterface(
            "ethernet", "fa:16:3e:00:00:02", target_dev="tap5c1b2a3d-4e", managed_tap=False
        ),
    ]
    metadata = GuestMetadata(
        instance_name=f"vm-{odd}",
        build_id=f"build-{odd}",
        flavor=FLAVOR,
        created_at="2024-05-01T12:00:00+00:00",
    )
    return GuestConfig(
        virt_type=virt_type,
        uuid=UUID,
        name=name,
        memory_mb=512,
        vcpus=2,
        metadata=metadata,
        arch="x86_64",
        disks=disks,
        interfaces=interfaces,
        console_log_path=f"/var/log/spawnflow/{odd}/console.log",
    )


DOCUMENTS = {
    "minimal-qemu": lambda: minimal(),
    "minimal-kvm": lambda: minimal(virt_type="kvm", machine="q35", arch="x86_64"),
    "minimal-test": lambda: minimal(virt_type="test"),
    "minimal-aarch64": lambda: minimal(arch="aarch64", machine="virt"),
    "full-kvm": lambda: full(),
    "full-qemu": lambda: full("qemu"),
    "full-test": lambda: full("test"),
    "full-nasty": lambda: full(name=NASTY, odd=NASTY),
    "cdrom-boot": lambda: minimal(
        boot_dev="cdrom",
        disks=[GuestDisk("hda", "ide", "file", device="cdrom", source_path="/srv/boot.iso")],
    ),
    "rbd-without-auth-or-hosts": lambda: minimal(
        disks=[GuestDisk("vda", "virtio", "network", source_protocol="rbd", source_name="vms/disk")]
    ),
    "managed-taps": lambda: minimal(
        interfaces=[
            GuestInterface("bridge", "fa:16:3e:00:00:03", bridge="br0", target_dev="tap0"),
            GuestInterface("ethernet", "FA:16:3E:00:00:04", model="e1000"),
        ]
    ),
}


def virt_xml_validate(xml: str, tmp_path) -> None:
    tool = shutil.which("virt-xml-validate")
    if tool is None:
        pytest.fail("virt-xml-validate is not installed (Debian package libvirt-clients)")
    path = tmp_path / "domain.xml"
    path.write_text(xml, encoding="utf-8")
    proc = subprocess.run(
        [tool, str(path), "domain"], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"{proc.stdout}{proc.stderr}\n{xml}"


@pytest.fixture
def test_conn():
    libvirt.registerErrorHandler(lambda *args: None, None)
    conn = libvirt.open("test:///default")
    yield conn
    conn.close()


@pytest.mark.parametrize("doc", sorted(DOCUMENTS))
def test_document_passes_libvirt_schema(doc, tmp_path):
    xml = DOCUMENTS[doc]().to_xml()
    virt_xml_validate(xml, tmp_path)


def test_full_document_shape():
    root = full().to_element()
    assert root.get("type") == "kvm"
    assert root.find("devices/emulator") is None  # libvirt picks the default emulator
    assert root.find("features/acpi") is not None and root.find("features/apic") is not None
    assert root.find("clock").get("offset") == "utc"
    assert [root.findtext(e) for e in ("on_poweroff", "on_reboot", "on_crash")] == [
        "destroy",
        "restart",
        "destroy",
    ]
    assert root.find("memory").get("unit") == "MiB" and root.findtext("memory") == "512"

    vda, vdb, iscsi, rbd, luks, cdrom = root.findall("devices/disk")
    assert vda.find("driver").attrib == {"name": "qemu", "type": "qcow2", "cache": "none"}
    assert vdb.get("type") == "block" and vdb.find("source").get("dev") == "/dev/mapper/x"
    assert iscsi.find("source/auth").get("username") == "chap-user"
    assert iscsi.find("source/auth/secret").attrib == {"type": "iscsi", "uuid": SECRET}
    assert [(h.get("name"), h.get("port")) for h in rbd.findall("source/host")] == [
        ("mon1.example.org", "6789"),
        ("192.0.2.11", "6789"),
        ("2001:db8::1", None),
    ]
    assert rbd.find("source/auth/secret").get("type") == "ceph"
    assert luks.find("encryption").get("format") == "luks"
    assert luks.find("encryption/secret").attrib == {"type": "passphrase", "uuid": LUKS_SECRET}
    assert cdrom.get("device") == "cdrom" and cdrom.find("readonly") is not None

    bridge, tap = root.findall("devices/interface")
    assert bridge.find("source").get("bridge") == "br-int"
    assert bridge.find("mtu").get("size") == "1450"
    assert [(p.get("name"), p.get("value")) for p in bridge.findall("filterref/parameter")] == [
        ("IP", "10.0.0.5"),
        ("MAC", "fa:16:3e:00:00:01"),
    ]
    assert tap.get("type") == "ethernet"
    assert tap.find("target").attrib == {"dev": "tap5c1b2a3d-4e", "managed": "no"}

    assert root.find("devices/serial/log").attrib == {
        "file": "/var/log/spawnflow/x/console.log",
        "append": "off",
    }
    assert root.find("devices/console").get("type") == "pty"
    flavor = root.find("metadata/sf:instance/sf:flavor", NS)
    assert {etree.QName(e).localname: e.text for e in flavor} == {
        k: str(v) for k, v in FLAVOR.items()
    }


def test_non_x86_gets_no_x86_features():
    assert minimal(arch="aarch64").to_element().find("features") is None


def test_to_xml_is_unicode_without_declaration():
    xml = full(name=NASTY).to_xml()
    assert isinstance(xml, str) and not xml.startswith("<?xml") and xml.endswith("\n")


def test_markup_characters_round_trip_as_data():
    xml = full(name=NASTY, odd=NASTY).to_xml()
    root = etree.fromstring(xml.encode("utf-8"))
    assert root.findtext("name") == NASTY
    assert root.find("evil") is None and root.find("name/evil") is None
    assert len(root.findall("name")) == 1
    instance = root.find("metadata/sf:instance", NS)
    assert instance.findtext("sf:name", namespaces=NS) == f"vm-{NASTY}"
    assert instance.findtext("sf:build-id", namespaces=NS) == f"build-{NASTY}"
    vda, vdb, iscsi, rbd, _luks, cdrom = root.findall("devices/disk")
    assert vda.find("source").get("file") == f"/var/lib/spawnflow/{NASTY}/disk"
    assert vdb.find("source").get("dev") == f"/dev/mapper/{NASTY}"
    assert iscsi.find("source").get("name") == f"iqn.2010-10.org.openstack:volume-{NASTY}/1"
    assert rbd.find("source").get("name") == f"volumes/{NASTY}"
    assert cdrom.find("source").get("file") == f"/srv/{NASTY}/config.iso"
    assert root.find("devices/serial/log").get("file") == f"/var/log/spawnflow/{NASTY}/console.log"
    assert len(root.findall("devices/disk")) == 6
    assert parse_domain_uuid(xml) == UUID


@pytest.mark.parametrize("doc", ["minimal-test", "full-test"])
def test_test_driver_accepts_document(doc, test_conn):
    xml = DOCUMENTS[doc]().to_xml()
    dom = test_conn.defineXML(xml)
    try:
        assert dom.UUIDString() == UUID
        assert parse_domain_uuid(dom.XMLDesc(0)) == UUID
    finally:
        dom.undefine()
    assert UUID not in [d.UUIDString() for d in test_conn.listAllDomains()]


def test_test_driver_keeps_nasty_name_and_metadata(test_conn):
    cfg = full("test", name=NASTY, odd=NASTY)
    dom = test_conn.defineXML(cfg.to_xml())
    try:
        assert dom.name() == NASTY
        # The metadata API hands the element back with its namespace stripped.
        stored = etree.fromstring(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS))
        assert stored.findtext("name") == f"vm-{NASTY}"
        desc = etree.fromstring(dom.XMLDesc(0).encode("utf-8"))
        assert desc.findtext("metadata/sf:instance/sf:build-id", namespaces=NS) == f"build-{NASTY}"
        assert desc.find("devices/disk/source").get("file") == f"/var/lib/spawnflow/{NASTY}/disk"
    finally:
        dom.undefine()


def _disk(**kw):
    base = {"target_dev": "vda", "target_bus": "virtio", "source_type": "file", "source_path": "/d"}
    return GuestDisk(**{**base, **kw})


def _net_disk(**kw):
    base = {
        "target_dev": "vda",
        "target_bus": "virtio",
        "source_type": "network",
        "source_protocol": "rbd",
        "source_name": "pool/image",
    }
    return GuestDisk(**{**base, **kw})


def _vif(**kw):
    return GuestInterface(**{"kind": "bridge", "mac": "fa:16:3e:00:00:01", "bridge": "br0", **kw})


def _meta(**kw):
    base = {
        "instance_name": "vm",
        "build_id": "b",
        "flavor": FLAVOR,
        "created_at": "2024-05-01T12:00:00",
    }
    return GuestMetadata(**{**base, **kw})


INVALID = [
    ("virt_type", lambda: minimal(virt_type="xen")),
    ("GuestConfig.uuid", lambda: minimal(uuid="not-a-uuid")),
    ("GuestConfig.uuid", lambda: minimal(uuid=UUID + "'")),
    ("GuestConfig.name", lambda: minimal(name="")),
    ("GuestConfig.name", lambda: minimal(name="a/b")),
    ("GuestConfig.name", lambda: minimal(name="two\nlines")),
    ("GuestConfig.name", lambda: minimal(name="nul\x00byte")),
    ("memory_mb", lambda: minimal(memory_mb=0)),
    ("memory_mb", lambda: minimal(memory_mb="512")),
    ("vcpus", lambda: minimal(vcpus=0)),
    ("vcpus", lambda: minimal(vcpus=True)),
    ("os_type", lambda: minimal(os_type="xen")),
    ("machine", lambda: minimal(machine="pc q35")),
    ("boot_dev", lambda: minimal(boot_dev="usb")),
    ("console_log_path", lambda: minimal(console_log_path="relative.log")),
    ("on_crash", lambda: minimal(on_crash="explode")),
    ("GuestConfig.disks", lambda: minimal(disks=[_disk(), _disk(source_path="/e")])),
    ("GuestConfig.disks", lambda: minimal(disks=["vda"])),
    ("GuestConfig.interfaces", lambda: minimal(interfaces=[_vif(), _vif()])),
    ("GuestDisk.target_bus", lambda: _disk(target_bus="usb")),
    ("GuestDisk.target_bus", lambda: _disk(device="cdrom")),
    ("GuestDisk.target_dev", lambda: _disk(target_dev="sda")),
    ("GuestDisk.target_dev", lambda: _disk(target_dev="vda1")),
    ("GuestDisk.source_type", lambda: _disk(source_type="volume")),
    ("GuestDisk.driver_format", lambda: _disk(driver_format="vmdk")),
    ("GuestDisk.device", lambda: _disk(device="floppy")),
    ("GuestDisk.source_path", lambda: _disk(source_path=None)),
    ("GuestDisk.source_path", lambda: _disk(source_path="relative/disk")),
    ("GuestDisk.source_protocol", lambda: _disk(source_protocol="rbd")),
    ("GuestDisk.auth_username", lambda: _disk(auth_username="u")),
    ("GuestDisk.serial", lambda: _disk(serial="bad<serial")),
    ("GuestDisk.source_protocol", lambda: _net_disk(source_protocol=None)),
    ("GuestDisk.source_protocol", lambda: _net_disk(source_protocol="nbd")),
    ("GuestDisk.source_name", lambda: _net_disk(source_name=None)),
    ("GuestDisk.source_name", lambda: _net_disk(source_name="no-pool")),
    ("GuestDisk.source_path", lambda: _net_disk(source_path="/d")),
    ("GuestDisk.source_hosts", lambda: _net_disk(source_protocol="iscsi", source_name="iqn/1")),
    ("GuestDisk.source_hosts", lambda: _net_disk(source_hosts=["mon1"])),
    (
        "GuestDisk.auth_secret_type",
        lambda: _net_disk(auth_username="u", auth_secret_type="iscsi", auth_secret_uuid=SECRET),
    ),
    (
        "GuestDisk.auth_secret_uuid",
        lambda: _net_disk(auth_username="u", auth_secret_type="ceph", auth_secret_uuid=None),
    ),
    (
        "GuestDisk.auth_username",
        lambda: _net_disk(auth_username=None, auth_secret_type="ceph", auth_secret_uuid=SECRET),
    ),
    (
        "GuestDisk.auth_username",
        lambda: _net_disk(
            auth_username="client.x y", auth_secret_type="ceph", auth_secret_uuid=SECRET
        ),
    ),
    ("NetworkDiskHost.name", lambda: NetworkDiskHost("mon 1")),
    ("NetworkDiskHost.port", lambda: NetworkDiskHost("mon1", 0)),
    ("NetworkDiskHost.port", lambda: NetworkDiskHost("mon1", 70000)),
    ("DiskEncryption.secret_uuid", lambda: DiskEncryption("passphrase")),
    ("GuestInterface.kind", lambda: _vif(kind="direct")),
    ("GuestInterface.mac", lambda: _vif(mac="fa:16:3e:00:00")),
    ("GuestInterface.mac", lambda: _vif(mac="fa-16-3e-00-00-01")),
    ("GuestInterface.mac", lambda: _vif(mac="zz:16:3e:00:00:01")),
    ("GuestInterface.mac", lambda: _vif(mac="01:00:5e:00:00:01")),
    ("GuestInterface.model", lambda: _vif(model="virtio net")),
    ("GuestInterface.bridge", lambda: _vif(bridge=None)),
    ("GuestInterface.bridge", lambda: _vif(bridge="a-bridge-name-too-long")),
    ("GuestInterface.bridge", lambda: _vif(kind="ethernet")),
    ("GuestInterface.target_dev", lambda: _vif(target_dev="tap/0")),
    ("GuestInterface.managed_tap", lambda: _vif(target_dev="tap0", managed_tap=False)),
    ("GuestInterface.target_dev", lambda: _vif(kind="ethernet", bridge=None, managed_tap=False)),
    ("GuestInterface.mtu", lambda: _vif(mtu=67)),
    ("GuestInterface.mtu", lambda: _vif(mtu=65536)),
    ("FilterRef.name", lambda: FilterRef("bad name")),
    ("FilterRef.parameters", lambda: FilterRef("clean-traffic", [("IP", "10.0.0.5/24")])),
    ("FilterRef.parameters", lambda: FilterRef("clean-traffic", [("I P", "10.0.0.5")])),
    ("FilterRef.parameters", lambda: FilterRef("clean-traffic", ["IP=10.0.0.5"])),
    ("GuestMetadata.instance_name", lambda: _meta(instance_name="")),
    ("GuestMetadata.build_id", lambda: _meta(build_id=None)),
    ("GuestMetadata.flavor", lambda: _meta(flavor={"vcpus": 1})),
    ("GuestMetadata.flavor['vcpus']", lambda: _meta(flavor={**FLAVOR, "vcpus": -1})),
    ("GuestMetadata.created_at", lambda: _meta(created_at="yesterday")),
]


@pytest.mark.parametrize("field, make", INVALID, ids=[f for f, _ in INVALID])
def test_invalid_input_raises_value_error_naming_field(field, make):
    with pytest.raises(ValueError, match=re.escape(field)):
        make()


def test_to_element_rechecks_mutated_device_lists():
    cfg = minimal(disks=[_disk()])
    cfg.disks.append(_disk(source_path="/other"))
    with pytest.raises(ValueError, match=r"GuestConfig.disks"):
        cfg.to_xml()


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        minimal().name = "other"


def test_parse_domain_uuid():
    assert parse_domain_uuid(minimal(uuid=UUID.upper()).to_xml()) == UUID
    assert (
        parse_domain_uuid(
            f"<?xml version='1.0' encoding='UTF-8'?>\n<domain><uuid> {UUID} </uuid></domain>"
        )
        == UUID
    )
    for bad in (
        "<domain",
        "<domain><name>x</name></domain>",
        f"<vm><uuid>{UUID}</uuid></vm>",
        "<domain><uuid>nope</uuid></domain>",
    ):
        with pytest.raises(ValueError, match="xml"):
            parse_domain_uuid(bad)


def test_parse_domain_uuid_does_not_expand_entities():
    xml = f'<!DOCTYPE domain [<!ENTITY u "{UUID}">]><domain><uuid>&u;</uuid></domain>'
    with pytest.raises(ValueError, match="uuid"):
        parse_domain_uuid(xml)
