"""The host audit on a real host: libvirtd + QEMU (TCG), taps, nwfilters, secrets.

Resources are made by hand to look like what a build leaves (each with the
marker a step writes), others with no marker at all, and a real spawn runs
beside them. The host is shared with whatever else runs on it, so every
check is about the resources this test made (named below); the audit itself
sees the whole host, and ``--reap`` is never given ``--unknown`` unscoped
(that would remove other tests' resources, whose builds this log lacks).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets as pysecrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import libvirt
import pytest
import sqlalchemy as sa
from pyroute2 import IPRoute

import spawnflow.conf
from spawnflow import Agent
from spawnflow.cmd.main import main
from spawnflow.history import History
from spawnflow.persistence import tables as t
from spawnflow.persistence.eventlog import EventLog
from spawnflow.virt.firewall.nwfilter import filter_name, filter_xml
from spawnflow.virt.guest_config import METADATA_NS
from spawnflow.virt.instance_files import MARKER
from spawnflow.virt.secrets import usage_id
from spawnflow.virt.vif.base import tap_alias, tap_name
from spawnflow.virt.vif.netlink import tap_exists
from spawnflow.virt.vif.tap import create_tagged_tap
from tests.helpers import make_spec, new_mac, new_uuid, tap_vif

pytestmark = pytest.mark.integration

DAY = 86400


def _build(log: EventLog, host: str, states: list[str]) -> tuple[str, str]:
    """A build of a new instance on ``host`` moved through ``states``: (build, instance)."""
    build_id, instance = new_uuid(), new_uuid()
    log.create_build(build_id, instance_uuid=instance, instance_name="vm-made", host=host, spec={})
    for state in states:
        log.transition_build(build_id, state)
    return build_id, instance


def _domain_xml(dom_uuid: str, build_id: str | None) -> str:
    metadata = (
        f"<metadata><sf:instance xmlns:sf='{METADATA_NS}'><sf:build-id>{build_id}"
        "</sf:build-id></sf:instance></metadata>"
        if build_id
        else ""
    )
    return (
        f"<domain type='qemu'><name>sftest-audit-{dom_uuid[:8]}</name><uuid>{dom_uuid}</uuid>"
        f"<memory unit='MiB'>32</memory><vcpu>1</vcpu>{metadata}"
        "<os><type arch='x86_64'>hvm</type></os></domain>"
    )


def _secret_xml(usage: str) -> str:
    return (
        "<secret ephemeral='no' private='yes'><usage type='volume'>"
        f"<volume>{usage}</volume></usage></secret>"
    )


def _cli_audit(conf_file: Path, capsys: pytest.CaptureFixture[str], *args: str) -> list[dict]:
    capsys.readouterr()
    assert main(["-q", "--config-file", str(conf_file), "host", "audit", "-f", "json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def _by_name(rows: list[dict], names: set[str]) -> dict[str, str]:
    """name -> status of the rows about ``names`` (key names of the JSON output)."""
    return {r["Name"]: r["Status"] for r in rows if r["Name"] in names}


def _wait_paused(conn, instance: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if conn.lookupByUUIDString(instance).state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                return
        except libvirt.libvirtError:
            pass
        threading.Event().wait(0.1)
    pytest.fail(f"domain {instance} never paused waiting for its event")


@pytest.fixture
def foreign(libvirt_conn, tmp_path: Path):
    """Resources with no spawnflow marker: a tap, a domain, a filter (removed after)."""
    tap = "sfx" + pysecrets.token_hex(4)
    dom_uuid = str(uuid.uuid4())
    flt = "sftest-foreign-" + pysecrets.token_hex(4)
    with IPRoute() as ipr:
        ipr.link("add", ifname=tap, kind="tuntap", mode="tap")
    libvirt_conn.defineXML(_domain_xml(dom_uuid, None))
    libvirt_conn.nwfilterDefineXML(filter_xml(flt))
    yield {"tap": tap, "domain": dom_uuid, "nwfilter": flt}
    with IPRoute() as ipr:
        for index in ipr.link_lookup(ifname=tap):
            ipr.link("del", index=index)
    for undo in (
        lambda: libvirt_conn.lookupByUUIDString(dom_uuid).undefine(),
        lambda: libvirt_conn.nwfilterLookupByName(flt).undefine(),
    ):
        with contextlib.suppress(libvirt.libvirtError):
            undo()


def test_audit_lists_orphans_and_foreign_and_reaps_only_orphans(
    real_conf, qcow2_image, libvirt_conn, cleanup, foreign, capsys, tmp_path
):
    conf = real_conf(recovery={"lease_seconds": 30})
    conf_file = tmp_path / "spawnflow.conf"
    host = conf.host
    instances = Path(spawnflow.conf.instances_path(conf))
    with EventLog.open(spawnflow.conf.database_url(conf)) as log:
        gone, gone_instance = _build(log, host, ["REVERTING", "ROLLED_BACK"])
        failed, failed_instance = _build(log, host, ["RUNNING", "REVERTING", "FAILED"])
    unknown, unknown_instance = new_uuid(), new_uuid()  # a build this log never had
    cleanup += [gone_instance, failed_instance, unknown_instance]

    # What a rolled-back build would have left: each with the marker its step writes.
    vif, mac = new_uuid(), new_mac()
    orphan_tap = tap_name(vif)
    with IPRoute() as ipr:
        create_tagged_tap(ipr, orphan_tap, tap_alias(gone_instance, vif, gone))
    orphan_secret = usage_id(gone_instance, new_uuid(), gone)
    libvirt_conn.secretDefineXML(_secret_xml(orphan_secret))
    orphan_filter = filter_name(gone_instance, mac, gone)
    libvirt_conn.nwfilterDefineXML(filter_xml(orphan_filter))
    libvirt_conn.defineXML(_domain_xml(gone_instance, gone))
    orphan_dir = instances / gone_instance
    orphan_dir.mkdir(parents=True)
    (orphan_dir / MARKER).write_text(gone)
    unknown_filter = filter_name(unknown_instance, new_mac(), unknown)
    libvirt_conn.nwfilterDefineXML(filter_xml(unknown_filter))
    leftover_secret = usage_id(failed_instance, new_uuid(), failed)
    libvirt_conn.secretDefineXML(_secret_xml(leftover_secret))
    foreign_dir = instances / "made-by-hand"
    foreign_dir.mkdir()
    part = instances / "_base" / ("src-" + "0" * 32 + ".part")

    orphans = {orphan_tap, orphan_secret, orphan_filter, gone_instance, str(orphan_dir)}
    foreigns = {foreign["tap"], foreign["domain"], foreign["nwfilter"], str(foreign_dir)}

    # A real build, held paused waiting for its port's event: unfinished.
    port = tap_vif(active=False)
    spec = make_spec(qcow2_image, vifs=[port])
    running = spec["instance"]["uuid"]
    cleanup.append(running)
    with Agent(conf) as agent:
        build_id = agent.start_build(spec)
        _wait_paused(libvirt_conn, running)
        part.write_bytes(b"half an image")  # agent start removes those a crash left
        mine = {tap_name(port["id"]), running, str(instances / running)}

        # Read-only, through the real command, beside the running agent.
        rows = _cli_audit(conf_file, capsys, "--all")
        seen = _by_name(rows, orphans | foreigns | mine | {unknown_filter, leftover_secret})
        assert seen == {
            **dict.fromkeys(orphans, "orphan"),
            **dict.fromkeys(foreigns, "foreign"),
            **dict.fromkeys(mine, "unfinished"),
            unknown_filter: "orphan",
            leftover_secret: "leftover",
        }
        assert _by_name(rows, {str(part)}) == {str(part): "orphan"}
        assert not any(r["Name"] in {"clean-traffic", "no-mac-spoofing"} for r in rows)

        # --reap needs the host lease, which this agent holds.
        assert main(["-q", "--config-file", str(conf_file), "host", "audit", "--reap"]) != 0
        assert "--reap removes orphans under the host lease" in capsys.readouterr().err

        report = agent.audit(reap=True)
        assert {f.name for f in report.reaped} >= orphans | {str(part)}
        touched = {f.name for f in report.reaped} & (foreigns | mine | {leftover_secret})
        assert touched == set()
        assert unknown_filter not in {f.name for f in report.reaped}  # needs --unknown
        scoped = agent.audit(reap=True, instances=[unknown_instance], unknown=True)
        assert [f.name for f in scoped.reaped] == [unknown_filter]

        agent.deliver_event(running, "network-vif-plugged", port["id"])
        assert agent.wait(build_id, timeout=120).state == "ACTIVE"

    # Exactly the orphans are gone; the foreign and everything else are still there.
    assert not tap_exists(orphan_tap) and not orphan_dir.exists() and not part.exists()
    gone_too = (
        lambda: libvirt_conn.secretLookupByUsage(
            libvirt.VIR_SECRET_USAGE_TYPE_VOLUME, orphan_secret
        ),
        lambda: libvirt_conn.nwfilterLookupByName(orphan_filter),
        lambda: libvirt_conn.nwfilterLookupByName(unknown_filter),
        lambda: libvirt_conn.lookupByUUIDString(gone_instance),
    )
    for lookup in gone_too:
        with pytest.raises(libvirt.libvirtError):
            lookup()
    assert tap_exists(foreign["tap"]) and foreign_dir.is_dir()
    libvirt_conn.lookupByUUIDString(foreign["domain"])
    libvirt_conn.nwfilterLookupByName(foreign["nwfilter"])
    libvirt_conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_VOLUME, leftover_secret)
    assert tap_exists(tap_name(port["id"])) and (instances / running).is_dir()

    # Each removal is in the log, announced before it, with what and why.
    with History.open(spawnflow.conf.database_url(conf)) as history, history.engine.connect() as c:
        reaps = c.execute(
            sa.select(t.events.c.subject, t.events.c.payload).where(
                t.events.c.kind == "audit", t.events.c.to_state == "REAP"
            )
        ).all()
    by_name = {row.payload["name"]: row for row in reaps}
    assert set(by_name) >= orphans | {unknown_filter}
    assert by_name[orphan_tap].subject == gone
    assert "ROLLED_BACK" in by_name[orphan_tap].payload["reason"]


def test_audit_says_missing_for_an_active_instance_and_expires_unused_cache(
    real_conf, qcow2_image, libvirt_conn, cleanup
):
    conf = real_conf(audit={"interval": 600}, images={"cache_max_age": DAY})
    port = tap_vif(active=True)
    spec = make_spec(qcow2_image, vifs=[port])
    instance = spec["instance"]["uuid"]
    cleanup.append(instance)
    base = Path(spawnflow.conf.instances_path(conf)) / "_base"
    with Agent(conf) as agent:
        build_id = agent.start_build(spec)
        assert agent.wait(build_id, timeout=120).state == "ACTIVE"
        (used,) = [p for p in base.iterdir() if len(p.name) == 64]
        unused = base / ("ab" * 32)
        unused.write_bytes(b"an image no build uses")
        two_days_ago = time.time() - 2 * DAY
        for entry in (used, unused):
            os.utime(entry, (two_days_ago, two_days_ago))

        tap = tap_name(port["id"])
        with IPRoute() as ipr:
            ipr.link("del", index=ipr.link_lookup(ifname=tap)[0])

        # The periodic audit: one interval after the first call, then every interval.
        now = time.time()
        assert agent.audit_if_due(now) is None
        report = agent.audit_if_due(now + 600)
        assert report is not None
        missing = [(f.kind, f.name, f.build_id) for f in report.of("missing")]
        assert missing == [("tap", tap, build_id)]
        assert not unused.exists()
        assert used.exists() and time.time() - used.stat().st_mtime < DAY  # marked used
        assert [f.name for f in report.reaped] == [str(unused)]

    with History.open(spawnflow.conf.database_url(conf)) as history:
        text = history.build(build_id).diagnose().text
    assert f"the host has no tap {tap} for this ACTIVE instance (host audit at" in text


def test_the_agent_command_audits_every_interval_and_logs_it(real_conf, libvirt_conn, cleanup):
    conf = real_conf(audit={"interval": 1})
    url = spawnflow.conf.database_url(conf)
    with EventLog.open(url) as log:
        gone, instance = _build(log, conf.host, ["REVERTING", "ROLLED_BACK"])
    cleanup.append(instance)
    orphan = filter_name(instance, new_mac(), gone)
    libvirt_conn.nwfilterDefineXML(filter_xml(orphan))
    conf_file = Path(str(conf.state_path)).parent / "spawnflow.conf"
    code = "import sys; from spawnflow.cmd.main import main; sys.exit(main(sys.argv[1:]))"
    agent = subprocess.Popen(
        [sys.executable, "-c", code, "--config-file", str(conf_file), "agent"]
        + ["--poll-interval", "0.2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    found = []
    try:
        deadline = time.monotonic() + 60
        while not found and time.monotonic() < deadline and agent.poll() is None:
            threading.Event().wait(0.3)
            with History.open(url) as history, history.engine.connect() as conn:
                found = conn.execute(
                    sa.select(t.events.c.payload).where(
                        t.events.c.kind == "audit", t.events.c.to_state == "FOUND"
                    )
                ).all()
    finally:
        agent.send_signal(signal.SIGTERM)
        _out, err = agent.communicate(timeout=60)
    assert found, f"no audit recorded by the agent; its stderr:\n{err}"
    assert any(orphan in name for name in found[0].payload["orphans"])
    assert f"host audit: orphan nwfilter {orphan}" in err
    libvirt_conn.nwfilterLookupByName(orphan)  # the periodic audit removes no orphan
