"""Prove the real host parts the integration tests rely on are there and work.

A domain on a Linux bridge with a ``clean-traffic`` filterref runs under TCG,
START_PAUSED + resume works, a volume secret round-trips, and PostgreSQL takes
connections and lets the test role make throwaway databases.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest
import sqlalchemy as sa
from pyroute2 import IPRoute

pytestmark = pytest.mark.integration

GUEST_IP = "10.0.0.5"


def _domain_xml(name: str, disk: Path, bridge: str | None = None) -> str:
    interface = ""
    if bridge is not None:
        interface = f"""
    <interface type='bridge'>
      <source bridge='{bridge}'/>
      <model type='virtio'/>
      <filterref filter='clean-traffic'>
        <parameter name='IP' value='{GUEST_IP}'/>
      </filterref>
    </interface>"""
    return f"""
<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid.uuid4()}</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>{interface}
  </devices>
</domain>
"""


def _unique_name() -> str:
    return "sf-it-" + secrets.token_hex(4)


def _remove_domain(conn: libvirt.virConnect, name: str) -> None:
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        return
    if dom.isActive():
        dom.destroy()
    dom.undefine()


def _taps(dom: libvirt.virDomain) -> list[str]:
    root = ET.fromstring(dom.XMLDesc(0))
    return [t.get("dev") for t in root.findall("./devices/interface/target") if t.get("dev")]


def _link_master(ipr: IPRoute, ifname: str) -> int | None:
    (link,) = ipr.get_links(ifname=ifname)
    return link.get("IFLA_MASTER")


def test_domain_on_bridge_with_clean_traffic_runs(libvirt_conn, linux_bridge, qcow2_image):
    name = _unique_name()
    try:
        dom = libvirt_conn.defineXML(_domain_xml(name, qcow2_image, bridge=linux_bridge))
        dom.create()
        state, _reason = dom.state()
        assert state == libvirt.VIR_DOMAIN_RUNNING

        taps = _taps(dom)
        assert len(taps) == 1, taps
        tap = taps[0]
        with IPRoute() as ipr:
            (bridge_index,) = ipr.link_lookup(ifname=linux_bridge)
            assert ipr.link_lookup(ifname=tap), f"tap {tap} does not exist"
            assert _link_master(ipr, tap) == bridge_index

        # The nwfilter driver put clean-traffic's ebtables chains on the tap.
        ebtables = shutil.which("ebtables")
        assert ebtables, "ebtables missing; run tools/install-deps.sh"
        rules = subprocess.run(
            [ebtables, "-t", "nat", "-L"], check=True, capture_output=True, text=True
        ).stdout
        assert f"libvirt-I-{tap}" in rules
        assert GUEST_IP in rules

        dom.destroy()
        dom.undefine()
        with IPRoute() as ipr:
            assert not ipr.link_lookup(ifname=tap), f"tap {tap} left behind"
        assert name not in [d.name() for d in libvirt_conn.listAllDomains()]
    finally:
        _remove_domain(libvirt_conn, name)


def test_start_paused_then_resume(libvirt_conn, qcow2_image):
    name = _unique_name()
    try:
        dom = libvirt_conn.defineXML(_domain_xml(name, qcow2_image))
        dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
        state, _reason = dom.state()
        assert state == libvirt.VIR_DOMAIN_PAUSED
        dom.resume()
        state, _reason = dom.state()
        assert state == libvirt.VIR_DOMAIN_RUNNING
    finally:
        _remove_domain(libvirt_conn, name)
    with pytest.raises(libvirt.libvirtError):
        libvirt_conn.lookupByName(name)


def test_volume_secret_define_set_value_undefine(libvirt_conn, qcow2_image):
    secret_uuid = str(uuid.uuid4())
    volume = str(qcow2_image)
    xml = f"""
<secret ephemeral='no' private='no'>
  <uuid>{secret_uuid}</uuid>
  <description>spawnflow integration test</description>
  <usage type='volume'><volume>{volume}</volume></usage>
</secret>
"""
    secret = libvirt_conn.secretDefineXML(xml, 0)
    try:
        secret.setValue(b"s3cr3t-passphrase", 0)
        found = libvirt_conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_VOLUME, volume)
        assert found.UUIDString() == secret_uuid
        assert found.value(0) == b"s3cr3t-passphrase"
    finally:
        secret.undefine()
    with pytest.raises(libvirt.libvirtError):
        libvirt_conn.secretLookupByUUIDString(secret_uuid)


def test_postgres_accepts_connections_and_createdb(postgres_url):
    engine = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    scratch = "sf_scratch_" + secrets.token_hex(4)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 41 + 1")).scalar_one() == 42
            conn.execute(sa.text(f'CREATE DATABASE "{scratch}"'))
            try:
                scratch_url = sa.make_url(postgres_url).set(database=scratch)
                scratch_engine = sa.create_engine(scratch_url)
                try:
                    with scratch_engine.connect() as sconn:
                        assert sconn.execute(sa.text("SELECT current_database()")).scalar_one() == (
                            scratch
                        )
                finally:
                    scratch_engine.dispose()
            finally:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{scratch}"'))
    finally:
        engine.dispose()
