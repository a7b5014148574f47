"""Which libvirt secrets a spec's iscsi/rbd volumes may name, on the real libvirtd.

A ``secret_uuid`` must name an existing secret of the driver's usage type
(iscsi, ceph) whose usage id is in ``[volumes] allowed_secret_usages``; a
volume secret spawnflow made for a LUKS volume never is. A refused spec writes
no build and leaves the host as it was.
"""

from __future__ import annotations

import contextlib
import os
import secrets as pysecrets
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
import sqlalchemy as sa

import spawnflow.conf
from spawnflow import Agent
from spawnflow.exceptions import InvalidSpec
from spawnflow.flows.policy import volume_refusals
from spawnflow.flows.spec import parse_spec
from spawnflow.virt.host import Host
from tests.helpers import leaks, make_spec, new_uuid


@pytest.fixture
def defined(libvirt_conn) -> Iterator:
    """``defined(type, usage)``: a libvirt secret, undefined after the test; returns its uuid."""
    made: list[libvirt.virSecret] = []

    def define(kind: str, usage: str) -> str:
        element = {"iscsi": "target", "ceph": "name", "volume": "volume"}[kind]
        secret = libvirt_conn.secretDefineXML(
            f"<secret ephemeral='no' private='yes'><usage type='{kind}'>"
            f"<{element}>{usage}</{element}></usage></secret>"
        )
        made.append(secret)
        secret.setValue(b"chap-password-never-shown")
        return secret.UUIDString()

    yield define
    for secret in made:
        with contextlib.suppress(libvirt.libvirtError):
            secret.undefine()


@pytest.fixture
def host(libvirt_uri: str) -> Iterator[Host]:
    host = Host(libvirt_uri, "qemu")
    yield host
    host.close()


def iscsi(secret_uuid: str) -> dict:
    return {
        "id": new_uuid(),
        "driver": "iscsi",
        "device": "vdb",
        "portal": "192.0.2.10:3260",
        "iqn": "iqn.2010-10.org.openstack:v1",
        "lun": 0,
        "auth_username": "chap",
        "secret_uuid": secret_uuid,
    }


def rbd(secret_uuid: str) -> dict:
    return {
        "id": new_uuid(),
        "driver": "rbd",
        "device": "vdc",
        "pool": "volumes",
        "image": "v1",
        "auth_username": "cinder",
        "secret_uuid": secret_uuid,
    }


def reasons(real_conf, host: Host, *volumes: dict, allowed: str) -> dict[str, str]:
    conf = real_conf(volumes={"allowed_secret_usages": allowed})
    spec = parse_spec(make_spec(Path("/srv/images/cirros.qcow2"), volumes=list(volumes)))
    return {r.field: r.reason for r in volume_refusals(spec, conf, host)}


def test_allowed_iscsi_and_ceph_secrets_pass(real_conf, host, defined):
    tag = pysecrets.token_hex(4)
    target, name = f"iqn.2010-10.org.sf-test:{tag}", f"client.sf-test-{tag} secret"
    found = reasons(
        real_conf,
        host,
        iscsi(defined("iscsi", target)),
        rbd(defined("ceph", name)),
        allowed=f"{target},{name}",
    )
    assert found == {}


def test_a_secret_whose_usage_is_not_listed_is_refused(real_conf, host, defined):
    tag = pysecrets.token_hex(4)
    allowed = f"iqn.2010-10.org.sf-test:{tag}"
    defined("iscsi", allowed)
    other = defined("iscsi", f"iqn.2010-10.org.sf-test:other-{tag}")
    found = reasons(real_conf, host, iscsi(other), allowed=allowed)
    assert found == {
        "volumes.0.secret_uuid": (
            f"'{other}' has usage 'iqn.2010-10.org.sf-test:other-{tag}', not in [volumes] "
            f"allowed_secret_usages ({allowed})"
        )
    }
    assert (
        "not in [volumes] allowed_secret_usages (empty: none)"
        in reasons(real_conf, host, iscsi(other), allowed="")["volumes.0.secret_uuid"]
    )


def test_a_secret_of_the_wrong_usage_type_is_refused(real_conf, host, defined):
    tag = pysecrets.token_hex(4)
    ceph = defined("ceph", f"client.sf-test-{tag} secret")
    target = f"iqn.2010-10.org.sf-test:{tag}"
    chap = defined("iscsi", target)
    found = reasons(
        real_conf, host, iscsi(ceph), rbd(chap), allowed=f"client.sf-test-{tag} secret,{target}"
    )
    assert found == {
        "volumes.0.secret_uuid": f"'{ceph}' is a secret of usage type 'ceph'; a volume of "
        "driver 'iscsi' needs usage type 'iscsi'",
        "volumes.1.secret_uuid": f"'{chap}' is a secret of usage type 'iscsi'; a volume of "
        "driver 'rbd' needs usage type 'ceph'",
    }


def test_a_spawnflow_volume_secret_is_never_allowed(real_conf, host, defined):
    # The passphrase of another build's LUKS volume, even if an operator listed it.
    usage = f"spawnflow/{new_uuid()}/{new_uuid()}/{new_uuid()}"
    uuid = defined("volume", usage)
    found = reasons(real_conf, host, iscsi(uuid), allowed=usage)
    assert found == {
        "volumes.0.secret_uuid": (
            f"'{uuid}' is a volume secret spawnflow made; it is never given to a guest disk"
        )
    }


def test_a_missing_secret_is_refused(real_conf, host):
    missing = new_uuid()
    found = reasons(real_conf, host, iscsi(missing), allowed="anything")
    assert found == {"volumes.0.secret_uuid": f"'{missing}' names no libvirt secret on this host"}


def test_a_refused_spec_writes_no_build_and_touches_nothing(
    real_conf, qcow2_image, defined, libvirt_conn, tmp_path
):
    tag = pysecrets.token_hex(4)
    denied = defined("iscsi", f"iqn.2010-10.org.sf-test:denied-{tag}")
    fifo = tmp_path / "fifo.key"
    os.mkfifo(fifo, 0o600)
    volume = tmp_path / "v.raw"
    volume.write_bytes(bytes(1 << 20))
    conf = real_conf()
    spec = make_spec(
        qcow2_image,
        volumes=[
            iscsi(denied),
            {"id": new_uuid(), "driver": "local", "device": "vdc", "path": "/etc/shadow"},
            {
                "id": new_uuid(),
                "driver": "local",
                "device": "vdd",
                "path": str(volume),
                "encryption": {"format": "luks", "key_file": str(fifo)},
            },
        ],
    )
    secrets_before = sorted(s.UUIDString() for s in libvirt_conn.listAllSecrets())
    with Agent(conf) as agent, pytest.raises(InvalidSpec) as raised:
        agent.start_build(spec)
    message = str(raised.value)
    assert "\n" not in message
    for field in (
        "volumes.0.secret_uuid: ",
        "volumes.1.path: '/etc/shadow' is outside",
        "volumes.2.encryption.key_file: ",
    ):
        assert field in message, message
    engine = sa.create_engine(spawnflow.conf.database_url(conf))
    with engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from builds")).scalar() == 0
    engine.dispose()
    assert (
        leaks(libvirt_conn, spec["instance"]["uuid"], Path(spawnflow.conf.instances_path(conf)))
        == []
    )
    assert sorted(s.UUIDString() for s in libvirt_conn.listAllSecrets()) == secrets_before
