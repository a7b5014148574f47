"""Each call under a real spawn fails once (transient) and for good (permanent); builds converge.

A real spawn on qemu:///system (TCG): a qcow2 root disk, a LUKS volume (a
libvirt secret), a tap VIF (netlink) filtered by an nwfilter, the domain
started paused until the port's network-vif-plugged arrives (delivered the
moment the ``vifs`` step has plugged it, as Neutron would). One fault per
cell, injected by the harness (:mod:`tests.faults`) at one call of one step,
in the step's execute or in its revert:

* durable commit (the write carrying the step's atom RUNNING or REVERTING),
* each libvirt call, ``qemu-img``, each netlink request.

Transient: the call fails once (for libvirt: its answer is lost with the
connection, as when libvirtd restarts). Permanent: it fails every time (the
log down for good, libvirt refusing the call, qemu-img out of space, netlink
``EPERM``). Libvirt calls are also *refused once*: the daemon answers one
call with a failure of its own.

A revert runs when a later step fails for real: for the steps before
``domain_create``, a domain of another uuid holds the instance's domain name
(``defineXML`` fails); for ``domain_create`` and ``resume``, the port's event
says ``failed`` (``resume`` fails with the domain defined and paused).

Every cell must end ACTIVE or ROLLED_BACK with nothing left on the host,
except a permanent fault in a revert's libvirt or netlink call: that build
ends FAILED and its diagnosis names, among the "steps not reverted", the step
that made each thing left. A permanent commit fault is a log down for good:
the agent gives up on it, the log comes back, and the next agent start
converges the build.

``make test`` runs the cells at ``REDUCED_SITES`` (a transient and a
permanent fault per fault point and step where the point is used, the commit
at five steps, and a refusal once of the libvirt calls that remove things in
a revert); the full sweep, every site of ``CATALOGUE`` in every mode, is
marked ``slow_faults`` (see this package's conftest). The outcome table is
printed at the end of the run.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import spawnflow.conf
from spawnflow import Agent
from spawnflow.engine.outcome import Outcome
from spawnflow.flows.spawn import step_names
from spawnflow.persistence import lifecycle
from spawnflow.persistence.step_results import VIF_PLUGGED
from spawnflow.virt import qemu_img, secrets
from spawnflow.virt.firewall.nwfilter import filter_name
from spawnflow.virt.vif.base import tap_alias, tap_name
from spawnflow.virt.vif.netlink import tap_exists
from spawnflow.virt.vif.tap import staging_tap_name
from tests.faults import (
    COMMIT,
    EXECUTE,
    LIBVIRT,
    NETLINK,
    PERMANENT,
    QEMU_IMG,
    REFUSED_ONCE,
    REVERT,
    TRANSIENT,
    Fault,
    Injector,
    Site,
)
from tests.helpers import history_of, leaks, make_spec, new_uuid, tap_vif
from tests.integration.faults.conftest import NO_FAULT, Row

pytestmark = pytest.mark.integration

STEPS = step_names()
# The steps that revert when the spawn fails at ``resume`` (those after it never ran).
REVERTED_AT_RESUME = STEPS[: STEPS.index("resume") + 1]
# Steps whose revert the cheap trigger (defineXML fails) reaches.
BEFORE_DOMAIN = STEPS[: STEPS.index("domain_create")]
E, R = EXECUTE, REVERT


def _at(point: str, call: str, *where: str) -> list[Site]:
    """Sites of ``call`` at each ``step:phase`` of ``where``."""
    return [Site(point, call, *w.split(":")) for w in where]


# Every call a spawn of the spec below makes, where it makes it (a test checks
# this against a recording). Left out: client-side connection housekeeping
# (isAlive, registerCloseCallback, setKeepAlive, close) and secret.UUIDString,
# which send no request to libvirtd and so cannot fail on its side.
CATALOGUE: tuple[Site, ...] = tuple(
    [Site(COMMIT, "atom RUNNING", step, E) for step in STEPS]
    + [Site(COMMIT, "atom REVERTING", step, R) for step in REVERTED_AT_RESUME]
    + _at(LIBVIRT, "listSecrets", "encryptor:execute")
    + _at(LIBVIRT, "secretLookupByUsage", "encryptor:execute", "encryptor:revert")
    + _at(LIBVIRT, "secretDefineXML", "encryptor:execute")
    + _at(LIBVIRT, "secret.setValue", "encryptor:execute")
    + _at(LIBVIRT, "secret.undefine", "encryptor:revert")
    + _at(LIBVIRT, "listNWFilters", "firewall:execute")
    + _at(LIBVIRT, "nwfilterLookupByName", "firewall:execute", "firewall:revert")
    + _at(LIBVIRT, "nwfilterDefineXML", "firewall:execute")
    + _at(LIBVIRT, "nwfilter.undefine", "firewall:revert")
    + _at(
        LIBVIRT,
        "lookupByUUIDString",
        "domain_create:execute",
        "domain_create:revert",
        "resume:execute",
        "wait_for_boot:execute",
    )
    + _at(LIBVIRT, "defineXML", "domain_create:execute")
    + _at(LIBVIRT, "domain.isActive", "domain_create:execute", "domain_create:revert")
    + _at(LIBVIRT, "domain.createWithFlags", "domain_create:execute")
    + _at(LIBVIRT, "domain.XMLDesc", "domain_create:revert")
    + _at(LIBVIRT, "domain.destroy", "domain_create:revert")
    + _at(LIBVIRT, "domain.isPersistent", "domain_create:revert")
    + _at(LIBVIRT, "domain.undefineFlags", "domain_create:revert")
    + _at(LIBVIRT, "domain.state", "resume:execute", "wait_for_boot:execute")
    + _at(LIBVIRT, "domain.resume", "resume:execute")
    + _at(QEMU_IMG, "info", "image:execute")
    + _at(QEMU_IMG, "create", "image:execute")
    + _at(QEMU_IMG, "resize", "image:execute")
    + _at(NETLINK, "link_lookup", "vifs:execute", "vifs:revert")
    + _at(NETLINK, "get_links", "vifs:execute", "vifs:revert")
    + _at(NETLINK, "link add ifname/ifr/kind/mode", "vifs:execute")
    + _at(NETLINK, "link set ifalias", "vifs:execute")
    + _at(NETLINK, "link set ifname", "vifs:execute")
    + _at(NETLINK, "link set state", "vifs:execute")
    + _at(NETLINK, "link del", "vifs:revert")
)
HOUSEKEEPING = frozenset(
    {
        "isAlive",
        "registerCloseCallback",
        "unregisterCloseCallback",
        "setKeepAlive",
        "close",
        "secret.UUIDString",
    }
)

# make test: one transient and one permanent fault per fault point and step
# (and phase) where the point is used, the commit at five chosen steps.
REDUCED_SITES = (
    _at(COMMIT, "atom RUNNING", "image:execute", "domain_create:execute", "wait_for_boot:execute")
    + _at(COMMIT, "atom REVERTING", "image:revert", "domain_create:revert")
    + _at(LIBVIRT, "secretDefineXML", "encryptor:execute")
    + _at(LIBVIRT, "secret.undefine", "encryptor:revert")
    + _at(LIBVIRT, "nwfilterDefineXML", "firewall:execute")
    + _at(LIBVIRT, "nwfilter.undefine", "firewall:revert")
    + _at(LIBVIRT, "domain.createWithFlags", "domain_create:execute")
    + _at(LIBVIRT, "domain.destroy", "domain_create:revert")
    + _at(LIBVIRT, "domain.resume", "resume:execute")
    + _at(LIBVIRT, "domain.state", "wait_for_boot:execute")
    + _at(QEMU_IMG, "create", "image:execute")
    + _at(NETLINK, "link add ifname/ifr/kind/mode", "vifs:execute")
    + _at(NETLINK, "link del", "vifs:revert")
)


def _modes(site: Site) -> tuple[str, ...]:
    """Transient and permanent; for libvirt also a call refused once (not a lost connection)."""
    return (TRANSIENT, REFUSED_ONCE, PERMANENT) if site.point == LIBVIRT else (TRANSIENT, PERMANENT)


def _reduced(fault: Fault) -> bool:
    """Whether ``make test`` runs this cell (a call refused once: only in a revert,
    which must not end FAILED for it)."""
    site = fault.site
    return site in REDUCED_SITES and (fault.mode != REFUSED_ONCE or site.phase == REVERT)


# Every site in every mode, in catalogue order; the full sweep's are marked.
CELLS = [
    pytest.param(fault, id=fault.id, marks=() if _reduced(fault) else pytest.mark.slow_faults)
    for fault in (Fault(site, mode) for site in CATALOGUE for mode in _modes(site))
]

# Which step makes each kind of thing ``leftovers`` reports.
MADE_BY = {
    "domain": "domain_create",
    "nwfilter binding": "domain_create",  # lives as long as the running domain
    "nwfilter": "firewall",
    "secret": "encryptor",
    "tap": "vifs",
    "instance dir": "image",
    "partial": "image",
}


def _label(site: Site) -> str:
    return f"{site.point} {site.call} @ {site.step} ({site.phase})"


@pytest.fixture(scope="session")
def luks_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(volume, key file) of one LUKS volume, copied for each build: ``qemu-img create``
    of a LUKS volume takes seconds (its key derivation), a copy milliseconds."""
    where = tmp_path_factory.mktemp("luks")
    key = where / "template.key"
    key.write_bytes(os.urandom(16).hex().encode())
    key.chmod(0o600)
    path = where / "template.luks"
    qemu_img.create_luks(str(path), 16 * 1024 * 1024, str(key), iter_time_ms=10)
    return path, key


def _luks_volume(template: tuple[Path, Path], tmp_path: Path) -> dict[str, Any]:
    """A LUKS volume of its own (a copy of the template) and its key file, in tmp_path."""
    volume_id = new_uuid()
    path, key = tmp_path / f"{volume_id}.luks", tmp_path / f"{volume_id}.key"
    shutil.copyfile(template[0], path)
    shutil.copyfile(template[1], key)
    key.chmod(0o600)
    return {
        "id": volume_id,
        "driver": "local",
        "path": str(path),
        "device": "vdb",
        "encryption": {"format": "luks", "key_file": str(key)},
    }


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


class Neutron:
    """Delivers the port's network-vif-plugged once the ``vifs`` step has plugged it.

    Wraps the injector's progress callback: the agent calls it on the build's
    thread, so the event is in the log before ``resume`` waits for it.
    """

    def __init__(self, injector: Injector, instance: str, port: str, status: str | None):
        self.injector = injector
        self.instance, self.port, self.status = instance, port, status
        self.agent: Agent | None = None
        self.sent = False

    def progress(self, build_id: str, step: str, state: str, elapsed: float) -> None:
        self.injector.progress(build_id, step, state, elapsed)
        if (step, state) == ("vifs", "SUCCESS") and self.status and not self.sent:
            assert self.agent is not None
            self.agent.deliver_event(self.instance, VIF_PLUGGED, self.port, status=self.status)
            self.sent = True

    def agent_for(self, conf: Any) -> Agent:
        self.agent = Agent(conf, progress=self.progress)
        return self.agent


def _owned_when_active(conf: Any, spec: dict[str, Any], build_id: str) -> list[str]:
    """What an ACTIVE build of ``spec`` has on the host (``leaks`` words): not a leak."""
    instance = spec["instance"]["uuid"]
    instances = Path(spawnflow.conf.instances_path(conf))
    owned = [f"domain {instance}", f"instance dir {instances / instance}"]
    for port in spec["vifs"]:
        nwfilter = filter_name(instance, port["mac"], build_id)
        owned += [
            f"tap {tap_name(port['id'])}",
            f"nwfilter {nwfilter}",
            f"nwfilter binding {tap_name(port['id'])} -> {nwfilter}",
        ]
    owned += [
        f"secret {secrets.usage_id(instance, volume['id'], build_id)}"
        for volume in spec.get("volumes", [])
        if volume.get("encryption")
    ]
    return owned


def leftovers(conn: Any, conf: Any, spec: dict[str, Any], outcome: Outcome) -> list[str]:
    """What the build left beyond what it owns: ``tests.helpers.leaks`` (less what an
    ACTIVE build keeps), plus half-made files and staging taps."""
    instance = spec["instance"]["uuid"]
    instances = Path(spawnflow.conf.instances_path(conf))
    ports = [port["id"] for port in spec["vifs"]]
    found = leaks(conn, instance, instances, taps=[tap_name(p) for p in ports])
    if outcome.state == lifecycle.ACTIVE:
        owned = _owned_when_active(conf, spec, outcome.build_id)
        assert sorted(set(owned) - set(found)) == [], "an ACTIVE build lacks its parts"
        found = [thing for thing in found if thing not in owned]
    found += [
        f"partial file {path}"
        for path in instances.rglob("*")
        if path.suffix in (".tmp", ".part") or (instance in path.name and path.parent == instances)
        if path != instances / instance
    ]
    found += [
        f"tap {staging}"
        for staging in (staging_tap_name(tap_alias(instance, p, outcome.build_id)) for p in ports)
        if tap_exists(staging)
    ]
    return found


def _owner(thing: str) -> str:
    """The step that made a thing ``leftovers`` names."""
    for prefix in sorted(MADE_BY, key=len, reverse=True):
        if thing.startswith(prefix + " "):
            return MADE_BY[prefix]
    raise AssertionError(f"no step makes {thing!r}")


def _foreign_domain(conn: Any, instance: str) -> Any:
    """A domain of another uuid named as the instance's will be: its defineXML fails."""
    xml = (
        f"<domain type='qemu'><name>instance-{instance}</name><uuid>{new_uuid()}</uuid>"
        "<memory unit='MiB'>64</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64'>hvm</type></os></domain>"
    )
    return conn.defineXML(xml)


def _converge(conf: Any, neutron: Neutron, spec: dict[str, Any], fault: Fault) -> Outcome:
    """Run the build to its end; a log down for good is lifted once the agent gave up."""
    agent = neutron.agent_for(conf)
    with agent:
        build_id = agent.start_build(spec)
        if not (fault.site.point == COMMIT and fault.mode == PERMANENT):
            return agent.wait(build_id, timeout=180)
        _wait_for(lambda: agent.failed is not None, "the agent never gave up on the log")
        assert "event log" in (agent.failed or "")
        held = history_of(conf, build_id)
        assert not lifecycle.is_final(held.state), held.state  # never FAILED for it
        neutron.injector.lift()
    with neutron.agent_for(conf) as again:
        return again.wait(build_id, timeout=180)


def _check(fault: Fault, outcome: Outcome, conf: Any, left: list[str]) -> None:
    """The cell's outcome is the one its fault allows."""
    site = fault.site
    build = history_of(conf, outcome.build_id)
    if fault.mode == PERMANENT and site.phase == REVERT and site.point in (LIBVIRT, NETLINK):
        assert outcome.state == lifecycle.FAILED, outcome
        assert left, "FAILED, yet nothing was left on the host"
        text = build.diagnose().text
        match = re.search(r"steps not reverted: ([^;]+);", text)
        assert match, text
        in_place = set(match.group(1).split(", "))
        # ... and what they left, by name (a domain uuid, a tap, a secret, a filter).
        assert "left on the host: nothing recorded" not in text, text
        assert site.step in in_place, text
        assert {_owner(thing) for thing in left} <= in_place, (left, text)
        return
    assert outcome.state in (lifecycle.ACTIVE, lifecycle.ROLLED_BACK), outcome
    assert left == [], left
    states = [t.to_state for t in build.lifecycle]
    assert lifecycle.FAILED not in states
    if site.point == COMMIT:  # the build was held, then recovered
        assert lifecycle.INTERRUPTED in states, states
    if site.point == LIBVIRT and fault.mode == TRANSIENT and site.phase == EXECUTE:
        # The answer was lost with the connection: the call is retried on a new one.
        assert outcome.state == lifecycle.ACTIVE, outcome
    if fault.mode != TRANSIENT and site.phase == EXECUTE and site.point != COMMIT:
        assert (outcome.state, build.failed_step) == (lifecycle.ROLLED_BACK, site.step), outcome


@pytest.mark.parametrize("fault", CELLS)
def test_fault(
    fault: Fault,
    injector: Injector,
    fault_table: list[Row],
    real_conf: Any,
    qcow2_image: Path,
    luks_template: tuple[Path, Path],
    libvirt_conn: Any,
    cleanup: list[str],
    tmp_path: Path,
) -> None:
    conf = real_conf(database={"retry_interval": 0.05, "max_retry_interval": 0.2, "max_retries": 3})
    port = tap_vif(active=False)
    spec = make_spec(qcow2_image, vifs=[port], volumes=[_luks_volume(luks_template, tmp_path)])
    instance = spec["instance"]["uuid"]
    cleanup.append(instance)
    site, foreign = fault.site, None
    status: str | None = "completed"
    if site.phase == REVERT and site.step in BEFORE_DOMAIN:
        foreign, status = _foreign_domain(libvirt_conn, instance), None
    elif site.phase == REVERT:
        status = "failed"
    neutron = Neutron(injector, instance, port["id"], status)
    injector.arm(fault)
    try:
        outcome = _converge(conf, neutron, spec, fault)
    finally:
        injector.disarm()
        if foreign is not None:
            foreign.undefine()
    left = leftovers(libvirt_conn, conf, spec, outcome)
    told = (
        history_of(conf, outcome.build_id).diagnose().text
        if outcome.state == lifecycle.FAILED
        else ""
    )
    fault_table.append(Row(_label(site), fault.mode, outcome.state, tuple(left), told))
    assert injector.fired_count() >= 1, f"{fault.id} never fired: the cell tested nothing"
    _check(fault, outcome, conf, left)


def test_catalogue_is_every_call_a_spawn_makes(
    injector: Injector,
    fault_table: list[Row],
    real_conf: Any,
    qcow2_image: Path,
    luks_template: tuple[Path, Path],
    libvirt_conn: Any,
    cleanup: list[str],
    tmp_path: Path,
) -> None:
    """No fault: a spawn, and one rolled back by its failed port, make exactly the
    catalogue's calls between them, so the full sweep fails each of them somewhere."""
    conf = real_conf()
    for status, expected in (("completed", lifecycle.ACTIVE), ("failed", lifecycle.ROLLED_BACK)):
        port = tap_vif(active=False)
        spec = make_spec(qcow2_image, vifs=[port], volumes=[_luks_volume(luks_template, tmp_path)])
        cleanup.append(spec["instance"]["uuid"])
        neutron = Neutron(injector, spec["instance"]["uuid"], port["id"], status)
        with neutron.agent_for(conf) as agent:
            outcome = agent.wait(agent.start_build(spec), timeout=180)
        left = leftovers(libvirt_conn, conf, spec, outcome)
        fault_table.append(Row(f"none ({status} event)", NO_FAULT, outcome.state, tuple(left)))
        assert (outcome.state, left) == (expected, []), outcome
    assert set(REDUCED_SITES) <= set(CATALOGUE)
    seen = {s for s in injector.all_calls() if s.call not in HOUSEKEEPING}
    assert sorted(seen - set(CATALOGUE)) == [], "calls missing from CATALOGUE"
    assert sorted(set(CATALOGUE) - seen) == [], "CATALOGUE sites a spawn no longer reaches"
