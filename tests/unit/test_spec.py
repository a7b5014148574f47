"""Build spec validation: every error names its field."""

import copy

import pytest

from spawnflow.exceptions import InvalidSpec
from spawnflow.flows.spec import parse_spec
from tests.helpers import load_conf

GOOD = {
    "instance": {"uuid": "6f1c2a7e-4a57-4f0e-9a49-3d0f7c0d1a01", "name": "vm <1> & 'x'"},
    "flavor": {"vcpus": 2, "memory_mb": 512, "root_gb": 5},
    "image": {"source": "http://images.example/cirros.qcow2", "checksum": "sha256:" + "ab" * 32},
    "volumes": [
        {
            "id": "7f0c0000-0000-4000-8000-000000000001",
            "driver": "local",
            "path": "/srv/v1.img",
            "device": "vdb",
            "encryption": {"format": "luks", "key_file": "/etc/spawnflow/keys/v1.key"},
        },
        {
            "id": "7f0c0000-0000-4000-8000-000000000002",
            "driver": "iscsi",
            "device": "vdc",
            "portal": "10.0.0.9:3260",
            "iqn": "iqn.2010-10.org.openstack:v2",
            "lun": 0,
            "auth_username": "u",
            "secret_uuid": "7f0c0000-0000-4000-8000-0000000000ff",
        },
        {
            "id": "7f0c0000-0000-4000-8000-000000000003",
            "driver": "rbd",
            "device": "vdd",
            "pool": "volumes",
            "image": "v3",
            "hosts": ["10.0.0.7"],
        },
    ],
    "vifs": [
        {
            "id": "2b9e0000-0000-4000-8000-000000000001",
            "mac": "FA:16:3E:12:34:56",
            "type": "bridge",
            "bridge": "br-int",
            "mtu": 1450,
            "ips": ["10.0.0.5"],
            "active": False,
        }
    ],
}


def with_(path, value):
    spec = copy.deepcopy(GOOD)
    target = spec
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[int(key)] if key.isdigit() else target[key]
    last = keys[-1]
    if value is KeyError:
        del target[last]
    elif last.isdigit():
        target[int(last)] = value
    else:
        target[last] = value
    return spec


def test_good_spec_parses():
    spec = parse_spec(GOOD)
    assert spec.vifs[0].mac == "fa:16:3e:12:34:56"
    assert spec.image.sha256 == "ab" * 32


# No step uses a password given in the spec (no config drive or guest agent for
# admin_password; qemu takes CHAP/cephx only from a libvirt secret), so both
# are refused rather than accepted and ignored, and never echoed back.
@pytest.mark.parametrize(
    "value", ["swordfish", "", 1234, ["swordfish"], {"nested": "swordfish"}, "sword\x00fish"]
)
@pytest.mark.parametrize(
    "path,field,hint",
    [
        ("admin_password", "admin_password", "no config drive or guest agent"),
        (
            "volumes.1.auth_password",
            "volumes.1.auth_password",
            r"give secret_uuid of a libvirt secret \(usage allowed by \[volumes\] "
            r"allowed_secret_usages\)",
        ),
        ("volumes.2.auth_password", "volumes.2.auth_password", "give secret_uuid"),
    ],
)
def test_password_fields_are_refused_without_echo(path, field, hint, value):
    with pytest.raises(InvalidSpec, match=f"{field}: .*{hint}") as raised:
        parse_spec(with_(path, value))
    message = str(raised.value)
    assert "swordfish" not in message and "1234" not in message
    assert "\n" not in message


def test_a_null_password_is_no_password():
    spec = parse_spec(with_("admin_password", None))
    assert spec.admin_password is None


@pytest.mark.parametrize(
    "path,value,field",
    [
        ("instance.uuid", "nope", "instance.uuid"),
        ("instance.name", "a/b", "instance.name"),
        ("flavor.memory_mb", -1, "flavor.memory_mb"),
        ("flavor.root_gb", KeyError, "flavor.root_gb"),
        ("image.source", "relative/path.qcow2", "image.source"),
        ("image.checksum", "md5:abc", "image.checksum"),
        ("image.disk_format", "vmdk", "image.disk_format"),
        ("volumes.0.path", None, "volumes.0"),
        ("volumes.0.device", "vda", "spec"),
        ("volumes.1.lun", None, "volumes.1"),
        ("volumes.2.driver", "nfs", "volumes.2.driver"),
        ("volumes.0.encryption.key_file", "keys/v1", "volumes.0.encryption.key_file"),
        ("volumes.0.path", "vols/x.img", "volumes.0.path"),
        ("vifs.0.mac", "fa:16:3e:12:34", "vifs.0.mac"),
        ("vifs.0.mtu", 10, "vifs.0.mtu"),
        ("vifs.0.ips", ["10.0.0.300"], "vifs.0.ips"),
        ("vifs.0.bridge", None, "vifs.0"),
        ("vifs.0.type", "ovs", "vifs.0.type"),
        # Values that used to pass here and fail in a later step, after the
        # instance dir, volume connections, secrets or taps were made:
        ("volumes.0.device", "xvdb", "volumes.0.device"),  # xen bus: domain_xml
        ("volumes.0.device", "hde", "volumes.0.device"),  # 1 IDE controller: defineXML
        ("vifs.0.mac", "01:00:5e:00:00:05", "vifs.0.mac"),  # multicast: domain_xml
        ("vifs.0.mac", "FB:16:3E:12:34:56", "vifs.0.mac"),  # 0xfb: multicast bit set
        ("vifs.0.mac", "ff:ff:ff:ff:ff:ff", "vifs.0.mac"),
        ("vifs.0.mac", "00:00:00:00:00:00", "vifs.0.mac"),
        ("vifs.0.mtu", 65522, "vifs.0.mtu"),  # tun max_mtu 65521: vifs/start
        ("vifs.0.mtu", 67, "vifs.0.mtu"),
        ("vifs.0.ips", ["fe80::1%eth0"], "vifs.0.ips"),  # '%': FilterRef parameter
        ("vifs.0.ips", ["10.0.0.5/24"], "vifs.0.ips"),
        ("vifs.0.ips", ["10.0.0.5", "10.0.0.5"], "vifs.0.ips"),
        ("vifs.0.bridge", "..", "vifs.0.bridge"),  # the kernel refuses the name
        ("instance.name", "vm\nx", "instance.name"),  # GuestMetadata.instance_name
        ("instance.name", "vm\ufffe", "instance.name"),
        ("image.source", "file://imagehost/cirros.qcow2", "image.source"),  # remote file://
        ("image.source", "/images/cirros\x00.qcow2", "image.source"),
        ("image.source", "https:///cirros.qcow2", "image.source"),
        ("volumes.0.path", "/srv/v\n1.img", "volumes.0.path"),  # GuestDisk.source_path
        ("volumes.0.encryption.key_file", "/etc/k\x00", "volumes.0.encryption.key_file"),
        ("volumes.1.iqn", "iqn.2010-10.org.openstack:v2/1", "volumes.1.iqn"),  # connector
        ("volumes.1.portal", "10.0.0.9:0", "volumes.1.portal"),
        ("volumes.1.portal", "[fd00::9", "volumes.1.portal"),
        ("volumes.1.portal", "portal host", "volumes.1.portal"),  # NetworkDiskHost.name
        ("volumes.1.auth_username", "chap user", "volumes.1.auth_username"),
        ("volumes.1.secret_uuid", KeyError, "volumes.1"),  # connector: needs both
        ("volumes.2.pool", "vol/umes", "volumes.2.pool"),
        ("volumes.2.image", "v3@snap", "volumes.2.image"),
        ("volumes.2.hosts", ["10.0.0.7", "mon 2"], "volumes.2.hosts"),
        ("flavor.vcpus", 256, "flavor.vcpus"),  # i440fx limit: defineXML
    ],
)
def test_bad_field_is_named(path, value, field):
    with pytest.raises(InvalidSpec) as raised:
        parse_spec(with_(path, value))
    assert f"{field}:" in str(raised.value)
    assert "swordfish" not in str(raised.value)


def test_duplicate_devices_are_refused():
    spec = with_("volumes.1.device", "vdb")
    with pytest.raises(InvalidSpec, match="duplicate vdb"):
        parse_spec(spec)


def test_one_local_path_twice_is_refused():
    # QEMU would refuse to start: 'Failed to get "write" lock'.
    spec = with_(
        "volumes.1",
        dict(
            GOOD["volumes"][0],
            id="7f0c0000-0000-4000-8000-000000000009",
            device="vdc",
            path="/srv/./v1.img",
        ),
    )
    with pytest.raises(InvalidSpec, match=r"volumes.path: duplicate /srv/v1.img"):
        parse_spec(spec)


def test_ports_that_want_the_same_tap_are_refused():
    # The tap name keeps 11 characters of the port id: both would be tap2b9e0000-00.
    spec = copy.deepcopy(GOOD)
    spec["vifs"].append(
        dict(GOOD["vifs"][0], id="2b9e0000-0000-4000-8000-000000000002", mac="fa:16:3e:12:34:57")
    )
    with pytest.raises(InvalidSpec, match=r"vifs.id \(tap name\): duplicate tap2b9e0000-00"):
        parse_spec(spec)


def test_a_bridge_named_like_a_ports_tap_is_refused():
    with pytest.raises(InvalidSpec, match=r"vifs.bridge: tap2b9e0000-00 is the tap name"):
        parse_spec(with_("vifs.0.bridge", "tap2b9e0000-00"))


@pytest.mark.parametrize(
    "path,value",
    [
        ("volumes.0.device", "hdd"),
        ("volumes.0.device", "sdzz"),
        ("volumes.0.device", "vdzz"),
        ("vifs.0.mtu", 65521),
        ("vifs.0.mtu", 68),
        ("vifs.0.mac", "02:00:00:00:00:01"),
        ("vifs.0.ips", ["2001:db8::5", "10.0.0.5"]),
        ("flavor.vcpus", 255),
        ("image.source", "file:///images/cirros.qcow2"),
        ("image.source", "file://localhost/images/cirros.qcow2"),
        ("volumes.1.portal", "[fd00::9]:3260"),
        ("instance.name", "vm \u00e9\U0001f600"),
    ],
)
def test_edges_that_stay_valid(path, value):
    parse_spec(with_(path, value))


def test_the_spec_edges_render_a_domain(tmp_path):
    """What the spec accepts, the later steps take: disk info, connectors, domain XML."""
    from types import SimpleNamespace

    from spawnflow.flows.disk_info import DiskInfoStep
    from spawnflow.flows.domain_xml import DomainXmlStep
    from spawnflow.flows.volumes import VolumesStep
    from spawnflow.virt.firewall.nwfilter import NWFilterFirewall

    local = tmp_path / "v1.img"
    local.write_bytes(bytes(4096))
    raw = copy.deepcopy(GOOD)
    raw["instance"]["name"] = "vm <1> \u00e9 \U0001f600"
    raw["volumes"][0].update(path=str(local), device="hdd")
    raw["volumes"][1].update(portal="[fd00::9]:3260")
    raw["volumes"][2].update(device="sdzz", hosts=["[fd00::7]:6789", "mon-1"])
    raw["vifs"][0].update(mtu=65521, ips=["10.0.0.5", "2001:db8::5"])
    raw["vifs"].append(
        {"id": "3c9e0000-0000-4000-8000-000000000002", "mac": "02:00:00:00:00:01", "type": "tap"}
    )
    spec = parse_spec(raw)
    conf = load_conf(tmp_path, libvirt={"virt_type": "qemu"}, volumes={"allowed_paths": tmp_path})
    ctx = SimpleNamespace(
        spec=spec,
        build_id="0b0b0000-0000-4000-8000-00000000000b",
        instance_uuid=spec.instance.uuid,
        firewall=NWFilterFirewall(None),
        conf=conf,
        guard=lambda: None,
    )
    disk_info = DiskInfoStep(ctx).execute()
    volumes = VolumesStep(ctx).execute()
    image = {
        "disk_format": "qcow2",
        "disk_path": str(tmp_path / "disk"),
        "console_log": str(tmp_path / "console.log"),
    }
    xml = DomainXmlStep(ctx).execute(
        disk_info, image, volumes, {spec.volumes[0].id: "7f0c0000-0000-4000-8000-0000000000aa"}
    )
    for text in (
        '<target dev="hdd" bus="ide"/>',
        '<target dev="sdzz" bus="scsi"/>',
        '<host name="fd00::9" port="3260"/>',
        '<host name="fd00::7" port="6789"/>',
        '<parameter name="IP" value="10.0.0.5"/>',
        '<parameter name="IPV6" value="2001:db8::5"/>',
        '<mtu size="65521"/>',
        '<target dev="tap3c9e0000-00" managed="no"/>',
    ):
        assert text in xml, text


def test_credentials_in_an_image_url_are_refused_and_not_echoed():
    spec = with_("image.source", "https://admin:s3cr3t-pw@images.example/x.qcow2")
    with pytest.raises(InvalidSpec, match=r"image.source: .*credentials") as raised:
        parse_spec(spec)
    assert "s3cr3t-pw" not in str(raised.value)


def test_yaml_base60_and_huge_numbers_are_refused_at_once(tmp_path) -> None:
    # YAML 1.1 base-60 ("1:59:59") is converted digit by digit into an ever
    # larger int: a 1 MiB scalar took a minute of CPU before it was refused.
    for name, number in (("base60", "1" + ":59" * 300_000), ("long", "9" * 100_000)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(
            "instance: {uuid: 6f1c2a7e-4a57-4f0e-9a49-3d0f7c0d1a01, name: a}\n"
            f"flavor: {{vcpus: {number}, memory_mb: 512, root_gb: 1}}\n"
            "image: {source: /x}\n"
        )
        with pytest.raises(InvalidSpec, match="plain decimal"):
            parse_spec(path)
