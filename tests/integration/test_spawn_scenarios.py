"""Failure scenarios of the spawn on a real host, each ending with zero leaks.

Real libvirtd + QEMU (TCG), real bridges and taps, real nwfilter and secrets,
an image server on loopback. Nothing is mocked: faults come from real host
conditions (a closed port, a name held by another domain, a volume another
process holds open, ...) or, where only timing can produce them or the spec
rightly refuses the input, from the test harness (the agent's ``progress``
callback, or a task's ``execute`` wrapped by the test; never from product code).

Every build ends with the host checked for leaks (domain, tap, secret,
instance nwfilter, instance directory, partial download) and its history
checked: which step failed, with what error, and that every earlier step was
reverted. Every domain XML the flow generated passes ``virt-xml-validate``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob
import hashlib
import http.server
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from lxml import etree

import spawnflow.conf
from spawnflow import Agent
from spawnflow.flows.context import BuildContext
from spawnflow.flows.domain_xml import DomainXmlStep
from spawnflow.flows.spawn import build_spawn_flow, step_names
from spawnflow.flows.spec import parse_spec
from spawnflow.history import History
from spawnflow.persistence.eventlog import ATOM
from spawnflow.virt import qemu_img, secrets
from spawnflow.virt.firewall.nwfilter import filter_name
from spawnflow.virt.metadata import build_id_of
from spawnflow.virt.vif.base import tap_alias, tap_name
from spawnflow.virt.vif.netlink import tap_exists
from tests.helpers import bridge_vif, history_of, leaks, make_spec, new_uuid, tap_vif

pytestmark = pytest.mark.integration

STEPS = step_names()


# -- harness ------------------------------------------------------------------------------


class _ImageHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def image_server(tmp_path: Path) -> Iterator[tuple[Path, str, list[str]]]:
    """(document root, base URL, requested paths) of a ThreadingHTTPServer on loopback."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_ImageHandler, directory=str(root))
    )
    server.requests = []
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="image-server", daemon=True
    )
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}", server.requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def closed_port() -> int:
    """A loopback TCP port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_valid_domain_xml(xml: str, where: Path) -> None:
    """``virt-xml-validate FILE domain`` (libvirt's RelaxNG schema) accepts ``xml``."""
    validator = shutil.which("virt-xml-validate")
    assert validator, "virt-xml-validate not found (libvirt-clients); run tools/install-deps.sh"
    where.write_text(xml)
    proc = subprocess.run([validator, str(where), "domain"], capture_output=True, text=True)
    assert proc.returncode == 0, f"{where} fails virt-xml-validate:\n{proc.stdout}{proc.stderr}"


def recorded_results(conf, build_id: str) -> dict[str, Any]:
    """Each step's result as recorded when it succeeded (from the history events)."""
    found: dict[str, Any] = {}
    with History.open(spawnflow.conf.database_url(conf)) as history:
        for event in history.events(build_id):
            changes = (event.payload or {}).get("set", {})
            if (
                event.kind == ATOM
                and event.to_state == "SUCCESS"
                and changes.get("results") is not None
            ):
                found[event.name] = changes["results"]
    return found


@pytest.fixture(autouse=True)
def every_generated_xml_is_valid(tmp_path: Path) -> Iterator[None]:
    """After each test: every domain XML a build of it generated passes virt-xml-validate.

    The XML is the ``domain_xml`` step's result, read from the event log (the
    event of its SUCCESS carries it); a build whose step succeeded must have one.
    """
    yield
    database = tmp_path / "state" / "spawnflow.sqlite"
    if not database.exists():
        return
    xmls = []
    with History.open("sqlite:///" + str(database)) as history:
        for row in history.builds(limit=1000):
            for event in history.events(row.build_id):
                if (
                    event.kind == ATOM
                    and event.name == "domain_xml"
                    and event.to_state == "SUCCESS"
                    and event.from_state == "RUNNING"
                ):
                    xml = event.payload["set"]["results"]
                    assert isinstance(xml, str) and xml.startswith("<domain"), event
                    xmls.append(xml)
    for index, xml in enumerate(xmls):
        assert_valid_domain_xml(xml, tmp_path / f"generated-{index}.xml")


def assert_rolled_back(conf, outcome, failed_step: str, error_type: str, *texts: str):
    """The build rolled back because ``failed_step`` raised ``error_type``; all before REVERTED."""
    assert outcome.state == "ROLLED_BACK", outcome
    assert outcome.error.startswith(f"{error_type}: "), outcome.error
    for text in texts:
        assert text in outcome.error, (text, outcome.error)
    build = history_of(conf, outcome.build_id)
    assert (build.state, build.error) == ("ROLLED_BACK", outcome.error)
    assert [t.to_state for t in build.lifecycle] == [
        "QUEUED",
        "RUNNING",
        "REVERTING",
        "ROLLED_BACK",
    ]
    assert build.failed_step == failed_step
    steps = {s.name: s for s in build.steps}
    failed = STEPS.index(failed_step)
    assert {name: steps[name].state for name in STEPS} == {
        name: "REVERTED" if i <= failed else "PENDING" for i, name in enumerate(STEPS)
    }
    assert steps[failed_step].error == outcome.error
    assert all(steps[name].error is None for name in STEPS if name != failed_step)
    for name in STEPS[: failed + 1]:
        step = steps[name]
        assert step.attempts == 1 and step.revert_ended_at is not None, step
        assert step.revert_started_at >= steps[failed_step].ended_at, step
    return build


def assert_no_leaks(conf, spec: dict, libvirt_conn) -> None:
    instances = Path(spawnflow.conf.instances_path(conf))
    taps = [tap_name(port["id"]) for port in spec.get("vifs", [])]
    assert leaks(libvirt_conn, spec["instance"]["uuid"], instances, taps=taps) == []


def assert_running(libvirt_conn, spec: dict, tmp_path: Path) -> libvirt.virDomain:
    dom = libvirt_conn.lookupByUUIDString(spec["instance"]["uuid"])
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert_valid_domain_xml(dom.XMLDesc(0), tmp_path / "live.xml")
    return dom


def run(
    conf,
    spec: dict,
    progress: Callable | None = None,
    events: Callable[[Agent], None] | None = None,
):
    """Start a build, let ``events(agent)`` deliver events, wait for its outcome."""
    with Agent(conf, progress=progress) as agent:
        build_id = agent.start_build(spec)
        if events is not None:
            events(agent)
        return agent.wait(build_id, timeout=120)


def at_step(step: str, state: str, action: Callable[[], None]) -> tuple[Callable, list]:
    """A progress callback running ``action`` once when ``step`` reports ``state``.

    The engine calls it synchronously, so the action is done before the next
    step begins. TaskFlow logs and swallows callback errors; they are kept in
    the returned list for the test to check.
    """
    errors: list[BaseException] = []
    done = threading.Event()

    def progress(_build_id: str, name: str, new_state: str, _elapsed: float) -> None:
        if (name, new_state) == (step, state) and not done.is_set():
            done.set()
            try:
                action()
            except BaseException as exc:
                errors.append(exc)

    progress.done = done
    return progress, errors


def luks_volume(tmp_path: Path, device: str = "vdb") -> dict:
    key = tmp_path / f"{device}.key"
    key.write_bytes(os.urandom(16).hex().encode())
    os.chmod(key, 0o600)
    path = tmp_path / f"{device}.luks"
    qemu_img.create_luks(str(path), 16 * 1024 * 1024, str(key), iter_time_ms=10)
    return {
        "id": new_uuid(),
        "driver": "local",
        "path": str(path),
        "device": device,
        "encryption": {"format": "luks", "key_file": str(key)},
    }


def raw_volume(tmp_path: Path, device: str = "vdb") -> dict:
    path = tmp_path / f"{device}.img"
    qemu_img.create(str(path), "raw", 16 * 1024 * 1024)
    return {"id": new_uuid(), "driver": "local", "path": str(path), "device": device}


# -- 1-3: the image over http -------------------------------------------------------------


@pytest.mark.parametrize("with_checksum", [False, True], ids=["no-checksum", "sha256"])
def test_image_over_http_goes_active(
    real_conf, qcow2_image, image_server, libvirt_conn, cleanup, tmp_path, with_checksum
):
    root, url, requests = image_server
    shutil.copy(qcow2_image, root / "cirros.qcow2")
    image = {"source": f"{url}/cirros.qcow2", "disk_format": "qcow2"}
    if with_checksum:
        image["checksum"] = "sha256:" + sha256_of(qcow2_image)
    conf = real_conf(images={"allowed_sources": f"{tmp_path},{url}/"})
    spec = dict(make_spec(qcow2_image), image=image)
    cleanup.append(spec["instance"]["uuid"])

    outcome = run(conf, spec)

    assert (outcome.state, outcome.error) == ("ACTIVE", None)
    assert requests == ["/cirros.qcow2"]
    base = Path(recorded_results(conf, outcome.build_id)["image"]["base_path"])
    assert base.parent == Path(spawnflow.conf.instances_path(conf)) / "_base"
    assert sha256_of(base) == sha256_of(qcow2_image)
    assert base.name == sha256_of(qcow2_image)  # content-addressed
    assert list(base.parent.glob("*.part")) == []
    dom = assert_running(libvirt_conn, spec, tmp_path)
    disk = Path(spawnflow.conf.instances_path(conf)) / spec["instance"]["uuid"] / "disk"
    assert f"<source file='{disk}'" in dom.XMLDesc(0)
    assert qemu_img.info(str(disk)).backing_file == str(base)
    assert all(step.state == "SUCCESS" for step in history_of(conf, outcome.build_id).steps)


@pytest.mark.parametrize("where", ["http-404", "closed-port"])
def test_image_unreachable_rolls_back(
    real_conf, qcow2_image, image_server, libvirt_conn, cleanup, where
):
    _root, url, requests = image_server
    if where == "http-404":
        source, text = f"{url}/missing.qcow2", "HTTP 404"
    else:
        source, text = f"http://127.0.0.1:{closed_port()}/x.qcow2", "Connection refused"
    conf = real_conf(images={"allowed_sources": source.rsplit("/", 1)[0] + "/"})
    spec = dict(make_spec(qcow2_image), image={"source": source, "disk_format": "qcow2"})
    cleanup.append(spec["instance"]["uuid"])

    outcome = run(conf, spec)

    assert_rolled_back(conf, outcome, "image", "ImageUnreachable", source, text)
    assert requests == (["/missing.qcow2"] if where == "http-404" else [])
    assert_no_leaks(conf, spec, libvirt_conn)
    base = Path(spawnflow.conf.instances_path(conf)) / "_base"
    assert not base.exists() or list(base.iterdir()) == []


def test_image_checksum_mismatch_over_http_leaves_no_part(
    real_conf, qcow2_image, image_server, libvirt_conn, cleanup
):
    root, url, requests = image_server
    shutil.copy(qcow2_image, root / "cirros.qcow2")
    wrong = hashlib.sha256(b"another image").hexdigest()
    conf = real_conf(images={"allowed_sources": f"{url}/"})
    spec = dict(
        make_spec(qcow2_image),
        image={
            "source": f"{url}/cirros.qcow2",
            "checksum": f"sha256:{wrong}",
            "disk_format": "qcow2",
        },
    )
    cleanup.append(spec["instance"]["uuid"])

    outcome = run(conf, spec)

    assert_rolled_back(
        conf,
        outcome,
        "image",
        "ImageChecksumMismatch",
        f"has sha256 {sha256_of(qcow2_image)}",
        f"but the spec expects sha256 {wrong}",
    )
    assert requests == ["/cirros.qcow2"]  # it was downloaded, then refused
    assert_no_leaks(conf, spec, libvirt_conn)
    base = Path(spawnflow.conf.instances_path(conf)) / "_base"
    assert list(base.iterdir()) == []  # no .part, no cached image, no sidecar


# -- 4-6: defineXML, createWithFlags and the XML step fail --------------------------------

FOREIGN_DOMAIN = """<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
</domain>"""


@pytest.mark.parametrize("clash", ["same-name", "same-uuid"])
def test_domain_step_fails_and_leaves_another_domain_untouched(
    real_conf, qcow2_image, libvirt_conn, cleanup, clash
):
    """same-name: defineXML fails (the name ``instance-<uuid>`` is held by another uuid);
    same-uuid: the step refuses to adopt a domain this build did not define."""
    conf = real_conf()
    spec = make_spec(qcow2_image)
    instance = spec["instance"]["uuid"]
    cleanup.append(instance)
    if clash == "same-name":
        name, foreign_uuid = f"instance-{instance}", new_uuid()
        cleanup.append(foreign_uuid)
        texts = ("defineXML failed", name, foreign_uuid)
    else:
        name, foreign_uuid = "sf-foreign-" + instance[:8], instance
        texts = (
            f"a domain with uuid {instance} already exists and was not defined by this "
            "build; refusing to touch it",
        )
    foreign = libvirt_conn.defineXML(FOREIGN_DOMAIN.format(name=name, uuid=foreign_uuid))
    before = foreign.XMLDesc(0)

    outcome = run(conf, spec)

    assert_rolled_back(conf, outcome, "domain_create", "DomainError", *texts)
    instances = Path(spawnflow.conf.instances_path(conf))
    assert leaks(libvirt_conn, instance, instances) == (
        [] if clash == "same-name" else [f"domain {instance}"]
    )  # only the other one
    still = libvirt_conn.lookupByName(name)
    assert (still.UUIDString(), still.isActive(), still.isPersistent()) == (foreign_uuid, 0, 1)
    assert still.XMLDesc(0) == before


@contextlib.contextmanager
def held_open_by_another_process(path: str) -> Iterator[None]:
    """``qemu-io`` keeps ``path`` open read-write (with QEMU's image locks) meanwhile."""
    holder = subprocess.Popen(
        ["qemu-io", "-f", "raw", path],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not any(os.path.realpath(fd) == path for fd in glob.glob(f"/proc/{holder.pid}/fd/*")):
            assert holder.poll() is None and time.monotonic() < deadline, "qemu-io did not start"
            time.sleep(0.05)
        yield
    finally:
        holder.stdin.close()
        holder.wait(10)


def test_start_fails_when_another_process_holds_the_volume(
    real_conf, qcow2_image, tmp_path, linux_bridge, libvirt_conn, cleanup
):
    """A real reason QEMU refuses to start: another process has the volume open for writing
    (QEMU's image lock). libvirt made the bridge port's tap before launching QEMU; the
    rollback leaves none of it behind, and the shared bridge stays."""
    volume = raw_volume(tmp_path)
    conf = real_conf()
    port = bridge_vif(linux_bridge)
    spec = make_spec(qcow2_image, vifs=[port], volumes=[volume])
    cleanup.append(spec["instance"]["uuid"])

    with held_open_by_another_process(volume["path"]):
        outcome = run(conf, spec)

    assert_rolled_back(
        conf,
        outcome,
        "domain_create",
        "DomainError",
        f"starting domain {spec['instance']['uuid']} failed",
        'Failed to get shared "write" lock',
        volume["path"],
    )
    assert_no_leaks(conf, spec, libvirt_conn)
    assert tap_exists(linux_bridge)  # the shared bridge stays


def test_start_fails_when_the_volume_vanishes_after_the_xml(
    real_conf, qcow2_image, tmp_path, libvirt_conn, cleanup
):
    """The harness deletes the volume file once the XML is made: QEMU cannot open it."""
    volume = raw_volume(tmp_path)
    conf = real_conf()
    spec = make_spec(qcow2_image, volumes=[volume])
    cleanup.append(spec["instance"]["uuid"])
    progress, errors = at_step("domain_xml", "SUCCESS", lambda: os.unlink(volume["path"]))

    outcome = run(conf, spec, progress=progress)

    assert progress.done.is_set() and errors == []
    assert_rolled_back(
        conf,
        outcome,
        "domain_create",
        "DomainError",
        f"starting domain {spec['instance']['uuid']} failed",
        volume["path"],
    )
    assert_no_leaks(conf, spec, libvirt_conn)


@pytest.mark.parametrize("fault", ["xen-bus-volume", "multicast-mac"])
def test_xml_fails_after_volumes_and_secrets(
    real_conf, qcow2_image, tmp_path, libvirt_conn, cleanup, monkeypatch, fault
):
    """The XML layer refuses a device after a LUKS volume was connected and its libvirt
    secret defined.

    The spec refuses both values itself (an ``xvd*`` device, which maps to the 'xen' bus a
    QEMU guest config does not have; a multicast MAC, which libvirt refuses), so the
    harness wraps the domain_xml step and hands the real step the bad value: the volume's
    disk mapping on the xen bus, or the port with a multicast MAC.
    """
    volume = luks_volume(tmp_path)
    vifs = [tap_vif()]
    conf = real_conf()
    spec = make_spec(qcow2_image, volumes=[volume], vifs=vifs)
    cleanup.append(spec["instance"]["uuid"])
    secret_defined = []
    usage = f"spawnflow/{spec['instance']['uuid']}/{volume['id']}/"
    progress, errors = at_step(
        "encryptor",
        "SUCCESS",
        lambda: secret_defined.append(
            any((s.usageID() or "").startswith(usage) for s in libvirt_conn.listAllSecrets())
        ),
    )
    multicast = "01:00:5e:00:00:05"
    real_execute = DomainXmlStep.execute

    def execute(self, disk_info, image, volumes, volume_secrets):
        if fault == "xen-bus-volume":
            disk_info = {
                **disk_info,
                volume["id"]: {**disk_info[volume["id"]], "dev": "xvdb", "bus": "xen"},
            }
        else:
            spec = self.ctx.spec
            port = spec.vifs[0].model_copy(update={"mac": multicast})
            self.ctx = dataclasses.replace(self.ctx, spec=spec.model_copy(update={"vifs": [port]}))
        return real_execute(self, disk_info, image, volumes, volume_secrets)

    monkeypatch.setattr(DomainXmlStep, "execute", execute)

    outcome = run(conf, spec, progress=progress)

    assert errors == [] and secret_defined == [True]
    if fault == "xen-bus-volume":
        assert_rolled_back(
            conf,
            outcome,
            "domain_xml",
            "VolumeError",
            f"volume {volume['id']}: cannot describe the guest disk",
            "GuestDisk.target_bus: 'xen' is not one of",
        )
    else:
        assert_rolled_back(
            conf, outcome, "domain_xml", "VifError", f"{multicast}' is a multicast address"
        )
    assert_no_leaks(conf, spec, libvirt_conn)
    assert Path(volume["path"]).exists()  # a local volume is never ours to delete


# -- 7-8: boot timeout, VIF events --------------------------------------------------------


def test_boot_timeout_destroys_and_undefines(real_conf, qcow2_image, libvirt_conn, cleanup):
    conf = real_conf(libvirt={"boot_timeout": 1})
    spec = make_spec(qcow2_image)
    cleanup.append(spec["instance"]["uuid"])
    progress, errors = at_step(
        "resume",
        "SUCCESS",
        lambda: libvirt_conn.lookupByUUIDString(spec["instance"]["uuid"]).suspend(),
    )

    outcome = run(conf, spec, progress=progress)

    assert progress.done.is_set() and errors == []
    build = assert_rolled_back(
        conf,
        outcome,
        "wait_for_boot",
        "BootTimeout",
        f"domain {spec['instance']['uuid']} still paused after boot_timeout=1s",
    )
    assert next(s for s in build.steps if s.name == "wait_for_boot").duration >= 1
    assert_no_leaks(conf, spec, libvirt_conn)
    # Neither persistent nor left running as a transient domain.
    with pytest.raises(libvirt.libvirtError):
        libvirt_conn.lookupByName(f"instance-{spec['instance']['uuid']}")


def test_failed_vif_event_is_fatal(real_conf, qcow2_image, linux_bridge, libvirt_conn, cleanup):
    conf = real_conf(network={"vif_plugging_is_fatal": True})
    port = bridge_vif(linux_bridge, active=False)
    spec = make_spec(qcow2_image, vifs=[port])
    cleanup.append(spec["instance"]["uuid"])

    outcome = run(
        conf,
        spec,
        events=lambda agent: agent.deliver_event(
            spec["instance"]["uuid"], "network-vif-plugged", port["id"], status="failed"
        ),
    )

    assert_rolled_back(
        conf,
        outcome,
        "resume",
        "VifPlugFailed",
        f"network-vif-plugged reported failed for port(s) {port['id']}",
    )
    assert_no_leaks(conf, spec, libvirt_conn)


def test_vif_timeout_not_fatal_goes_active(
    real_conf, qcow2_image, linux_bridge, libvirt_conn, cleanup, tmp_path
):
    conf = real_conf(network={"vif_plugging_timeout": 1, "vif_plugging_is_fatal": False})
    port = bridge_vif(linux_bridge, active=False)
    spec = make_spec(qcow2_image, vifs=[port])
    cleanup.append(spec["instance"]["uuid"])
    paused = []
    progress, _ = at_step(
        "resume",
        "RUNNING",
        lambda: paused.append(libvirt_conn.lookupByUUIDString(spec["instance"]["uuid"]).state()[0]),
    )

    outcome = run(conf, spec, progress=progress)

    assert (outcome.state, outcome.error) == ("ACTIVE", None)
    assert paused == [libvirt.VIR_DOMAIN_PAUSED]  # it did wait, started paused
    steps = {s.name: s for s in history_of(conf, outcome.build_id).steps}
    assert all(s.state == "SUCCESS" for s in steps.values())
    results = recorded_results(conf, outcome.build_id)
    # The deadline runs from when the VIF step began waiting, not from resume.
    assert steps["resume"].ended_at >= results["vifs"]["waiting_since"] + 1
    assert results["resume"] == {}  # no event came
    assert_running(libvirt_conn, spec, tmp_path)


# -- 9: tap VIFs --------------------------------------------------------------------------


def _tun_fds_of_qemu(dom: libvirt.virDomain) -> list[str]:
    """Interface names of the tun/tap fds the domain's QEMU process holds open."""
    pid = int(Path(f"/run/libvirt/qemu/{dom.name()}.pid").read_text())
    names = []
    for fdinfo in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = fdinfo.read_text()
        except OSError:
            continue  # closed meanwhile
        names += [
            line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("iff:")
        ]
    return names


def test_tap_vif_goes_active_on_our_tap(real_conf, qcow2_image, libvirt_conn, cleanup, tmp_path):
    conf = real_conf()
    port = tap_vif(active=True)
    spec = make_spec(qcow2_image, vifs=[port], volumes=[luks_volume(tmp_path)])
    instance = spec["instance"]["uuid"]
    cleanup.append(instance)

    outcome = run(conf, spec)

    assert (outcome.state, outcome.error) == ("ACTIVE", None)
    tap = tap_name(port["id"])
    dom = assert_running(libvirt_conn, spec, tmp_path)
    (iface,) = etree.fromstring(dom.XMLDesc(0).encode()).findall("devices/interface")
    assert iface.get("type") == "ethernet"
    assert iface.find("target").attrib == {"dev": tap, "managed": "no"}
    assert iface.find("mac").get("address") == port["mac"]
    assert (
        iface.find("filterref").get("filter")
        == filter_name(instance, port["mac"], outcome.build_id)
        == f"spawnflow-{instance}-{port['mac'].replace(':', '')}-{outcome.build_id}"
    )
    assert _tun_fds_of_qemu(dom) == [tap]  # the guest's NIC is our tap
    assert dom.interfaceStats(tap) is not None
    alias = Path(f"/sys/class/net/{tap}/ifalias").read_text().strip()
    assert (
        alias
        == tap_alias(instance, port["id"], outcome.build_id)
        == f"spawnflow:{instance}:{port['id']}:{outcome.build_id}"
    )
    # The leak check sees every kind of thing a build leaves while it is alive.
    instances = Path(spawnflow.conf.instances_path(conf))
    nwfilter = iface.find("filterref").get("filter")
    assert leaks(libvirt_conn, instance, instances, taps=[tap]) == [
        f"domain {instance}",
        f"instance dir {instances / instance}",
        f"tap {tap}",
        f"secret {secrets.usage_id(instance, spec['volumes'][0]['id'], outcome.build_id)}",
        f"nwfilter {nwfilter}",
        f"nwfilter binding {tap} -> {nwfilter}",
    ]


@pytest.fixture
def not_a_bridge() -> Iterator[str]:
    """A tap device (``sfnb`` + 6 hex digits, no alias) that a spec names as a bridge."""
    from pyroute2 import IPRoute

    name = "sfnb" + os.urandom(3).hex()
    with IPRoute() as ipr:
        ipr.link("add", ifname=name, kind="tuntap", mode="tap")
        try:
            yield name
        finally:
            for index in ipr.link_lookup(ifname=name):
                ipr.link("del", index=index)


def test_tap_vif_rollback_removes_the_tap(
    real_conf, qcow2_image, not_a_bridge, libvirt_conn, cleanup
):
    """The first port's tap is made, then the second port's bridge turns out to be a tap
    device: the failed step's own revert (no result recorded) finds the tap by its alias
    and removes it, and leaves the device it did not make alone."""
    conf = real_conf()
    port = tap_vif()
    spec = make_spec(qcow2_image, vifs=[port, bridge_vif(not_a_bridge)])
    cleanup.append(spec["instance"]["uuid"])
    seen = []
    progress, _ = at_step("vifs", "FAILURE", lambda: seen.append(tap_exists(tap_name(port["id"]))))

    outcome = run(conf, spec, progress=progress)

    assert seen == [True]  # the tap existed when the step failed
    assert_rolled_back(
        conf,
        outcome,
        "vifs",
        "VifError",
        f"device {not_a_bridge!r} exists but is a tun device, not a bridge",
    )
    assert_no_leaks(conf, spec, libvirt_conn)
    assert tap_exists(not_a_bridge)


# -- 10: revert twice ---------------------------------------------------------------------


def test_reverting_a_rolled_back_build_again_is_harmless(
    real_conf, qcow2_image, linux_bridge, tmp_path, libvirt_conn, cleanup
):
    """Every task's revert() runs again on the cleaned host, with and without its result."""
    conf = real_conf()
    tap_port, bridge_port = tap_vif(active=False), bridge_vif(linux_bridge, active=True)
    spec = make_spec(qcow2_image, vifs=[tap_port, bridge_port], volumes=[luks_volume(tmp_path)])
    cleanup.append(spec["instance"]["uuid"])
    outcome = run(
        conf,
        spec,
        events=lambda agent: agent.deliver_event(
            spec["instance"]["uuid"], "network-vif-plugged", tap_port["id"], status="failed"
        ),
    )
    assert_rolled_back(conf, outcome, "resume", "VifPlugFailed")
    assert_no_leaks(conf, spec, libvirt_conn)
    results = recorded_results(conf, outcome.build_id)
    assert set(results) == set(STEPS[: STEPS.index("resume")])  # all made something to revert

    with History.open(spawnflow.conf.database_url(conf)) as history:
        persisted = history.events(outcome.build_id)[0].payload["spec"]  # redacted spec
    with Agent(conf) as agent:  # the host services, built the way the agent builds them
        ctx = BuildContext(
            build_id=outcome.build_id,
            spec=parse_spec(persisted),
            conf=conf,
            host=agent.host,
            images=agent.images,
            firewall=agent.firewall,
            events=agent.events,
            instances_path=agent.instances_path,
        )
        tasks = list(build_spawn_flow(ctx))
        assert [t.name for t in tasks] == STEPS
        for task in reversed(tasks):
            task.revert(result=results.get(task.name), flow_failures={})
        assert_no_leaks(conf, spec, libvirt_conn)
        for task in reversed(tasks):
            task.revert()
        assert_no_leaks(conf, spec, libvirt_conn)
    assert Path(spec["volumes"][0]["path"]).exists()
    assert history_of(conf, outcome.build_id).state == "ROLLED_BACK"


# -- 11: an old build reverted again after a new build of the same instance --------------


def _host_state_of(conn: libvirt.virConnect, conf, spec: dict, build_id: str) -> dict:
    """What build ``build_id`` of ``spec`` has on the host, for before/after comparisons."""
    instance = spec["instance"]["uuid"]
    dom = conn.lookupByUUIDString(instance)
    instance_dir = Path(spawnflow.conf.instances_path(conf)) / instance
    disk = instance_dir / "disk"
    taps = [tap_name(port["id"]) for port in spec["vifs"]]
    return {
        "domain": (dom.state()[0], build_id_of(dom), dom.ID()),
        "qemu taps": sorted(_tun_fds_of_qemu(dom)),
        "dir marker": (instance_dir / ".spawnflow-build").read_text(),
        "disk": (disk.stat().st_ino, qemu_img.info(str(disk)).backing_file),
        "taps": {tap: Path(f"/sys/class/net/{tap}/ifindex").read_text().strip() for tap in taps},
        "tap aliases": {
            tap: Path(f"/sys/class/net/{tap}/ifalias").read_text().strip() for tap in taps
        },
        "secrets": sorted(
            (s.UUIDString(), s.usageID())
            for s in conn.listAllSecrets()
            if instance in (s.usageID() or "")
        ),
        "filters": sorted(
            (f.name(), f.UUIDString()) for f in conn.listAllNWFilters() if instance in f.name()
        ),
        "bindings": sorted(
            (b.portDev(), b.filterName())
            for b in conn.listAllNWFilterBindings()
            if b.portDev() in taps
        ),
    }


def test_reverting_an_old_build_again_leaves_a_later_build_intact(
    real_conf, qcow2_image, linux_bridge, tmp_path, libvirt_conn, cleanup
):
    """Build A of an instance rolls back; build B of the same spec (same instance uuid, ports,
    MACs, volume) goes ACTIVE; then every task of A reverts again, with A's recorded results
    and without. Every revert removes only what A made: B's domain keeps running, and its
    disk, taps (the tap VIF's and libvirt's bridge tap), LUKS secret and filters stay."""
    conf = real_conf()
    tap_port, bridge_port = tap_vif(active=False), bridge_vif(linux_bridge, active=True)
    spec = make_spec(qcow2_image, vifs=[tap_port, bridge_port], volumes=[luks_volume(tmp_path)])
    instance = spec["instance"]["uuid"]
    cleanup.append(instance)
    a = run(
        conf,
        spec,
        events=lambda agent: agent.deliver_event(
            instance, "network-vif-plugged", tap_port["id"], status="failed"
        ),
    )
    assert_rolled_back(conf, a, "resume", "VifPlugFailed")
    assert_no_leaks(conf, spec, libvirt_conn)
    a_results = recorded_results(conf, a.build_id)
    assert set(a_results) == set(STEPS[: STEPS.index("resume")])

    b = run(
        conf,
        spec,
        events=lambda agent: agent.deliver_event(instance, "network-vif-plugged", tap_port["id"]),
    )
    assert (b.state, b.error) == ("ACTIVE", None)
    assert_running(libvirt_conn, spec, tmp_path)
    b_state = _host_state_of(libvirt_conn, conf, spec, b.build_id)
    taps = [tap_name(port["id"]) for port in spec["vifs"]]
    # What B has, made by B: the checks below would see any of it go.
    assert b_state["domain"][:2] == (libvirt.VIR_DOMAIN_RUNNING, b.build_id)
    assert b_state["qemu taps"] == sorted(taps)
    assert b_state["dir marker"] == b.build_id
    assert b_state["tap aliases"][taps[0]] == tap_alias(instance, tap_port["id"], b.build_id)
    assert [usage for _, usage in b_state["secrets"]] == [
        secrets.usage_id(instance, spec["volumes"][0]["id"], b.build_id)
    ]
    assert [name for name, _ in b_state["filters"]] == sorted(
        filter_name(instance, port["mac"], b.build_id) for port in spec["vifs"]
    )
    assert [tap for tap, _ in b_state["bindings"]] == sorted(taps)

    with History.open(spawnflow.conf.database_url(conf)) as history:
        persisted = history.events(a.build_id)[0].payload["spec"]  # A's redacted spec
    with Agent(conf) as agent:
        ctx = BuildContext(
            build_id=a.build_id,
            spec=parse_spec(persisted),
            conf=conf,
            host=agent.host,
            images=agent.images,
            firewall=agent.firewall,
            events=agent.events,
            instances_path=agent.instances_path,
        )
        tasks = list(build_spawn_flow(ctx))
        for task in reversed(tasks):
            task.revert(result=a_results.get(task.name), flow_failures={})
        assert _host_state_of(libvirt_conn, conf, spec, b.build_id) == b_state
        for task in reversed(tasks):
            task.revert()
        assert _host_state_of(libvirt_conn, conf, spec, b.build_id) == b_state
    assert_running(libvirt_conn, spec, tmp_path)
    assert history_of(conf, a.build_id).state == "ROLLED_BACK"
    assert history_of(conf, b.build_id).state == "ACTIVE"
