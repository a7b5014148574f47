"""The host audit: what is on this host, compared with what the event log says.

    report = audit_host(conf)                 # read-only; no lease, an agent may run
    for finding in report.listed():
        print(finding.status, finding.kind, finding.name, finding.reason)

Every domain, tap, libvirt secret, nwfilter, filter binding, instance
directory, image-cache entry and partial download is listed
(``virt.inventory``, ``virt.inventory_files``) and given a status from the
build its spawnflow marker names:

* ``ok``: of an ACTIVE build; ``unfinished``: of a build still running, or of
  an instance that has one (never touched: the build is the owner);
* ``orphan``: the marker names a build the log says is gone (ROLLED_BACK,
  DELETED, RESOLVED), or no build of this host at all;
* ``leftover``: of a FAILED build (``spawnflow build retry`` or a delete deals
  with it; the audit does not);
* ``foreign``: no marker; listed, never touched. libvirt's stock filters are
  only counted;
* ``missing``: the log says an ACTIVE build made it (its steps' results), the
  host does not have it;
* image-cache entries: ``ok`` while a build of this host uses them,
  ``unused``, or ``expired`` once unused for longer than ``[images]
  cache_max_age``.

This module only reads; removing orphans and expired entries, and recording
what was found, is the agent's (``engine.audit_verbs``), under its lease.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from oslo_config import cfg

from spawnflow import conf as sf_conf
from spawnflow.engine.audit_report import (
    CACHE_ENTRY,
    EXPIRED,
    FOREIGN,
    LEFTOVER,
    LISTED,
    MISSING,
    OK,
    ORPHAN,
    UNFINISHED_STATUS,
    UNUSED,
    VIA_DOMAIN,
    WORDS,
    AuditReport,
    Finding,
    sort_key,
)
from spawnflow.engine.queue import UNFINISHED
from spawnflow.flows.domain_create import DomainCreateStep
from spawnflow.flows.encryptor import EncryptorStep
from spawnflow.flows.firewall import FirewallStep
from spawnflow.flows.image import ImageStep
from spawnflow.flows.vifs import VifsStep
from spawnflow.history import BuildHistory, BuildSummary, History
from spawnflow.persistence import lifecycle
from spawnflow.virt import inventory, inventory_files
from spawnflow.virt.host import Host
from spawnflow.virt.images import ImageCache
from spawnflow.virt.inventory import HostResource
from spawnflow.virt.secrets import usage_id


@dataclass
class HostBuilds:
    """What the log says about this host's builds, as the audit needs it."""

    host: str
    builds: dict[str, BuildSummary]
    busy: dict[str, BuildSummary]  # instance uuid -> its unfinished build
    records: dict[str, BuildHistory]  # ACTIVE, FAILED and unfinished builds, folded
    # instance uuid -> its ACTIVE or FAILED build: the instance directory is
    # named after the instance, so every build of it shares it (a later build
    # reuses the directory an earlier one made and marked).
    live: dict[str, BuildSummary] = field(default_factory=dict)

    @classmethod
    def read(cls, history: History, host: str) -> HostBuilds:
        builds = {b.build_id: b for b in history.builds(host=host, limit=None)}
        busy = {b.instance_uuid: b for b in builds.values() if b.state in UNFINISHED}
        kept = UNFINISHED | {lifecycle.ACTIVE, lifecycle.FAILED}
        records = {
            build_id: history.build(build_id) for build_id, b in builds.items() if b.state in kept
        }
        live = {
            b.instance_uuid: b
            for b in builds.values()
            if b.state in (lifecycle.ACTIVE, lifecycle.FAILED)
        }
        return cls(host, builds, busy, records, live)

    def classify(self, resource: HostResource) -> Finding:
        """The status of a resource on the host, from the build its marker names."""
        build_id, instance = resource.build_id, resource.instance_uuid

        def found(status: str, reason: str, unknown: bool = False) -> Finding:
            return Finding(
                status,
                resource.kind,
                resource.name,
                build_id,
                instance,
                reason,
                resource,
                unknown=unknown,
            )

        if build_id is None:
            return found(FOREIGN, "no spawnflow marker: not spawnflow's, never touched")
        row = self.builds.get(build_id)
        busy = self.busy.get(instance or "")
        if row is not None and row.state in UNFINISHED:
            return found(UNFINISHED_STATUS, f"build {build_id} is {row.state}")
        if busy is not None:
            return found(
                UNFINISHED_STATUS,
                f"instance {instance} has an unfinished build {busy.build_id} "
                f"({busy.state}): left to it",
            )
        shared_by = self.live.get(instance or "")
        if (
            resource.kind == inventory_files.INSTANCE_DIR
            and shared_by is not None
            and shared_by.build_id != build_id
        ):
            return found(
                OK if shared_by.state == lifecycle.ACTIVE else LEFTOVER,
                f"made by build {build_id}, now used by build {shared_by.build_id} "
                f"({shared_by.state}) of the same instance",
            )
        if row is None:
            return found(
                ORPHAN,
                f"its marker names build {build_id}, which is no build of host "
                f"{self.host} in the log",
                unknown=True,
            )
        if row.state == lifecycle.ACTIVE:
            return found(OK, f"of ACTIVE build {build_id}")
        if row.state == lifecycle.FAILED:
            return found(
                LEFTOVER,
                f"build {build_id} FAILED: `spawnflow build retry` or a delete deals with it",
            )
        return found(ORPHAN, f"build {build_id} is {row.state}: the log says it was removed")


def _result(build: BuildHistory, step: str) -> Any:
    """What step ``step`` of ``build`` made, if it ran and was not reverted."""
    for s in build.steps:
        if s.name == step and s.ran and not s.reverted:
            return s.made if s.made is not None else s.result
    return None


def expected(build: BuildHistory) -> list[tuple[str, str]]:
    """(kind, name) of every resource the log says ``build`` made, from its steps' results."""
    made: list[tuple[str, str]] = []
    image = _result(build, ImageStep.step)
    if isinstance(image, dict) and image.get("instance_dir"):
        made.append((inventory_files.INSTANCE_DIR, str(image["instance_dir"])))
    vifs = _result(build, VifsStep.step)
    for plug in vifs.get("plugged") or [] if isinstance(vifs, dict) else []:
        if isinstance(plug, dict) and plug.get("created_tap"):
            made.append((inventory.TAP, str(plug.get("tap"))))
    secrets = _result(build, EncryptorStep.step)
    for volume in secrets if isinstance(secrets, dict) else {}:
        made.append((inventory.SECRET, usage_id(build.instance_uuid, str(volume), build.build_id)))
    filters = _result(build, FirewallStep.step)
    made += [(inventory.NWFILTER, str(n)) for n in (filters if isinstance(filters, list) else [])]
    domain = _result(build, DomainCreateStep.step)
    if isinstance(domain, dict) and domain.get("uuid"):
        made.append((inventory.DOMAIN, str(domain["uuid"])))
    return made


def _attribute_taps(resources: list[HostResource]) -> list[HostResource]:
    """Unmarked taps libvirt made for a marked domain's interfaces take the domain's marker."""
    owners = {
        dev: r for r in resources if r.kind == inventory.DOMAIN and r.build_id for dev in r.devices
    }
    out = []
    for r in resources:
        owner = owners.get(r.name) if r.kind == inventory.TAP and r.build_id is None else None
        if owner is not None:
            r = HostResource(
                r.kind,
                r.name,
                owner.build_id,
                owner.instance_uuid,
                part=VIA_DOMAIN,
                detail=f"made by libvirt for domain {owner.name}",
            )
        out.append(r)
    return out


_MARKED = (inventory.DOMAIN, inventory.TAP)  # a name another build's may take


def _key(kind: str, name: str, build_id: str | None) -> tuple[str, str, str]:
    """How a resource is matched: a domain or tap with the build its marker names."""
    return kind, name, (build_id or "") if kind in _MARKED else ""


def _missing(
    log: HostBuilds, present: set[tuple[str, str, str]], scope: set[str] | None
) -> list[Finding]:
    """What the ACTIVE builds (in ``scope``) made by the log and the host lacks."""
    found = []
    for build in log.records.values():
        if build.state != lifecycle.ACTIVE or build.instance_uuid in log.busy:
            continue
        if scope is not None and build.instance_uuid not in scope:
            continue
        for kind, name in expected(build):
            if _key(kind, name, build.build_id) not in present:
                found.append(
                    Finding(
                        MISSING,
                        kind,
                        name,
                        build.build_id,
                        build.instance_uuid,
                        f"ACTIVE build {build.build_id} made it; the host has no such "
                        f"{WORDS.get(kind, kind)}",
                    )
                )
    return found


def used_images(log: HostBuilds) -> tuple[set[str], str | None]:
    """Digests of the cache entries builds of this host use, and why none may go now.

    Used: the base of every ACTIVE, FAILED or unfinished build (its image step's
    result), and the spec's checksum of an unfinished one. An unfinished build
    that has not yet said which image it uses (no result, no checksum) may be
    about to use any entry: then no entry is removed (the reason says so).
    """
    used: set[str] = set()
    unknown = []
    for build in log.records.values():
        if build.kind != lifecycle.SPAWN:
            continue  # a delete uses no image
        image = _result(build, ImageStep.step)
        if isinstance(image, dict) and image.get("base_path"):
            used.add(str(image["base_path"]).rsplit("/", 1)[-1])
            continue
        if build.state not in UNFINISHED:
            continue
        spec_image = (build.spec or {}).get("image") or {}
        digest = spec_image.get("sha256") if isinstance(spec_image, dict) else None
        if isinstance(digest, str) and digest:
            used.add(digest.strip().lower().removeprefix("sha256:"))
        else:
            unknown.append(build.build_id)
    if unknown:
        return used, (
            f"build(s) {', '.join(unknown)} have not recorded their image yet: "
            "no cache entry is removed until they have"
        )
    return used, None


def _cache(
    conf: cfg.ConfigOpts, log: HostBuilds, cache: ImageCache, now: float
) -> tuple[list[Finding], str | None]:
    """The image cache's entries and partial downloads as findings."""
    max_age = conf.images.cache_max_age
    used, note = used_images(log)
    found = []
    for entry in inventory_files.cache_entries(cache.base_dir):
        old = inventory_files.age(entry, now)
        if entry.digest in used:
            status, reason = OK, "used by a build of this host"
        elif max_age and old > max_age and note is None:
            status = EXPIRED
            reason = f"unused, last used {old:.0f}s ago (> [images] cache_max_age {max_age}s)"
        else:
            status, reason = UNUSED, f"unused, last used {old:.0f}s ago"
        found.append(Finding(status, CACHE_ENTRY, entry.path, reason=reason, entry=entry))
    for part in inventory_files.partials(cache.base_dir, cache.lock_dir):
        status = UNFINISHED_STATUS if part.part == inventory_files.WRITING else ORPHAN
        found.append(Finding(status, part.kind, part.name, reason=part.detail, resource=part))
    return found, note


def list_host(conf: cfg.ConfigOpts, host: Host) -> tuple[list[HostResource], int]:
    """Every resource on the host with its marker, and the number of stock filters."""
    filters = inventory.nwfilters(host)
    stock = [f for f in filters if f.detail == inventory.STOCK]
    resources = (
        inventory.domains(host)
        + inventory.taps()
        + inventory.secrets(host)
        + [f for f in filters if f.detail != inventory.STOCK]
        + inventory.bindings(host)
        + inventory_files.instance_dirs(sf_conf.instances_path(conf))
    )
    return _attribute_taps(resources), len(stock)


def inspect(
    conf: cfg.ConfigOpts,
    history: History,
    host: Host,
    *,
    instances: Iterable[str] = (),
    now: float | None = None,
) -> AuditReport:
    """Compare the host with the log (read-only); see the module docstring.

    ``instances``: only resources of these instances (by their markers) and
    their ACTIVE builds; foreign resources, the image cache and partial
    downloads are then left out.
    """
    now = time.time() if now is None else now
    scope = set(instances) or None
    log = HostBuilds.read(history, conf.host)
    resources, stock = list_host(conf, host)
    present = {_key(r.kind, r.name, r.build_id) for r in resources}
    findings = [
        log.classify(r)
        for r in resources
        if scope is None or (r.instance_uuid is not None and r.instance_uuid in scope)
    ]
    findings += _missing(log, present, scope)
    note = None
    if scope is None:
        cached, note = _cache(conf, log, ImageCache.from_conf(conf), now)
        findings += cached
    findings.sort(key=sort_key)
    return AuditReport(
        host=conf.host,
        at=now,
        findings=findings,
        stock_filters=stock,
        scope=tuple(sorted(scope or ())),
        cache_note=note,
    )


def audit_host(conf: cfg.ConfigOpts, *, instances: Iterable[str] = ()) -> AuditReport:
    """Audit this host read-only: no lease is taken, so it works while an agent runs.

    Reads the log through a read-only engine (``History.open``: a missing
    database is refused, never made) and opens its own libvirt connection.
    """
    host = Host.from_conf(conf)
    try:
        with History.open(sf_conf.database_url(conf)) as history:
            return inspect(conf, history, host, instances=instances)
    finally:
        host.close()


__all__ = [
    "CACHE_ENTRY",
    "EXPIRED",
    "FOREIGN",
    "LEFTOVER",
    "LISTED",
    "MISSING",
    "OK",
    "ORPHAN",
    "UNFINISHED_STATUS",
    "UNUSED",
    "AuditReport",
    "Finding",
    "audit_host",
    "inspect",
]
