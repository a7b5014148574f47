"""Build spec validation: every error names its field."""

import pytest

from spawnflow.exceptions import InvalidSpec
from spawnflow.flows.spec import parse_spec

GOOD = {
    "instance": {"uuid": "6f1c2a7e-4a57-4f0e-9a49-3d0f7c0d1a01", "name": "vm <1> & 'x'"},
    "flavor": {"vcpus": 2, "memory_mb": 512, "root_gb": 5},
    "image": {"source": "http://images.example/cirros.qcow2",
              "checksum": "sha256:" + "ab" * 32},
    "volumes": [
        {"id": "7f0c0000-0000-4000-8000-000000000001", "driver": "local",
         "path": "/srv/v1.img", "device": "vdb",
         "encryption": {"format": "luks", "key_file": "/etc/spawnflow/keys/v1.key"}},
        {"id": "7f0c0000-0000-4000-8000-000000000002", "driver": "iscsi", "device": "vdc",
         "portal": "10.0.0.9:3260", "iqn": "iqn.2010-10.org.openstack:v2", "lun": 0,
         "auth_username": "u", "auth_password": "p"},
        {"id": "7f0c0000-0000-4000-8000-000000000003", "driver": "rbd", "device": "vdd",
         "pool": "volumes", "image": "v3", "hosts": ["10.0.0.7"]},
    ],
    "vifs": [{"id": "2b9e0000-0000-4000-8000-000000000001", "mac": "FA:16:3E:12:34:56",
              "type": "bridge", "bridge": "br-int", "mtu": 1450, "ips": ["10.0.0.5"],
              "active": False}],
    "admin_password": "swordfish",
}


def with_(path, value):
    import copy
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


def test_good_spec_parses_and_redacts():
    spec = parse_spec(GOOD)
    assert spec.vifs[0].mac == "fa:16:3e:12:34:56"
    redacted = spec.redacted()
    assert redacted["admin_password"] == "**********"
    assert redacted["volumes"][1]["auth_password"] == "**********"
    assert "swordfish" not in str(redacted) and "swordfish" not in repr(spec)
    assert spec.image.sha256 == "ab" * 32


@pytest.mark.parametrize("path,value,field", [
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
    ("vifs.0.mac", "fa:16:3e:12:34", "vifs.0.mac"),
    ("vifs.0.mtu", 10, "vifs.0.mtu"),
    ("vifs.0.ips", ["10.0.0.300"], "vifs.0.ips"),
    ("vifs.0.bridge", None, "vifs.0"),
    ("vifs.0.type", "ovs", "vifs.0.type"),
])
def test_bad_field_is_named(path, value, field):
    with pytest.raises(InvalidSpec) as raised:
        parse_spec(with_(path, value))
    assert f"{field}:" in str(raised.value)
    assert "swordfish" not in str(raised.value)


def test_duplicate_devices_are_refused():
    spec = with_("volumes.1.device", "vdb")
    with pytest.raises(InvalidSpec, match="duplicate vdb"):
        parse_spec(spec)


def test_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("instance: [unclosed")
    with pytest.raises(InvalidSpec, match="not valid YAML"):
        parse_spec(str(bad))
    with pytest.raises(InvalidSpec, match="cannot read"):
        parse_spec(str(tmp_path / "missing.yaml"))
    with pytest.raises(InvalidSpec, match="must be a mapping"):
        parse_spec([1, 2])
