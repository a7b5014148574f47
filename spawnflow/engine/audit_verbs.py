"""The agent's side of the host audit: ``Agent.audit`` and ``Agent.audit_if_due``.

A mixin of ``Agent``. The comparison itself is ``engine.audit`` (read-only,
also run without an agent by ``spawnflow host audit``); here the agent, which
holds the host lease, records what it found and removes what may go:

* ``audit(reap=True)`` (``spawnflow host audit --reap``) removes every orphan
  (one whose marker names a build the log does not have only with
  ``unknown=True``, ``--unknown``), with the primitives the steps' reverts
  use, each removal announced by an ``audit`` event (``REAP``: what, whose,
  why) committed before it, and a ``REAP_FAILED`` event if it then fails.
  Foreign resources, leftovers of FAILED builds and anything of an instance
  with an unfinished build are never touched.
* Every whole-host audit of the agent, periodic or not, removes image-cache
  entries unused for longer than ``[images] cache_max_age`` and marks the
  used ones (their age counts from there).
* A whole-host audit records a ``FOUND`` event when its findings differ from
  the last one this agent recorded (``history.host_audit``): the diagnosis of
  an ACTIVE build reads what the host lacks from there.

The agent's lock is held throughout, so no build is submitted between the
reading of the log and the removals (a build already running is unfinished
in the log, so its instance's resources are left alone).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from oslo_config import cfg

from spawnflow.engine.audit import inspect
from spawnflow.engine.audit_report import (
    CACHE_ENTRY,
    EXPIRED,
    LEFTOVER,
    MISSING,
    OK,
    ORPHAN,
    VIA_DOMAIN,
    AuditReport,
    Finding,
    findings_payload,
)
from spawnflow.engine.metrics import AgentMetrics
from spawnflow.engine.ownership import HostLease
from spawnflow.exceptions import Fenced
from spawnflow.history import History
from spawnflow.history.host_audit import AUDIT, FOUND
from spawnflow.persistence import db
from spawnflow.persistence.eventlog import EventLog
from spawnflow.virt import domain, inventory, inventory_files, secrets
from spawnflow.virt.firewall.nwfilter import NWFilterFirewall
from spawnflow.virt.host import Host
from spawnflow.virt.images import ImageCache

LOG = logging.getLogger(__name__)
REAP = "REAP"  # to_state of the event announcing one removal
REAP_FAILED = "REAP_FAILED"


class AuditVerbs:
    """``audit`` and ``audit_if_due`` of ``Agent`` (see the module docstring)."""

    conf: cfg.ConfigOpts
    host: Host
    images: ImageCache
    lease: HostLease
    metrics: AgentMetrics
    _lock: threading.Lock
    # Class defaults: the agent's __init__ does not know about the audit.
    _audit_next_at: float | None = None
    _audit_recorded: dict[str, Any] | None = None

    def _log(self) -> EventLog:  # pragma: no cover - Agent's
        raise NotImplementedError

    def audit(
        self, reap: bool = False, instances: Iterable[str] = (), unknown: bool = False
    ) -> AuditReport:
        """Compare this host with the log; with ``reap``, remove the orphans.

        An orphan whose marker names no build of this host in the log is
        removed only with ``unknown`` too: pointed at the wrong database, an
        agent would otherwise take every VM of the host for an orphan.
        ``instances``: only those instances' resources (no foreign ones, no
        image cache). Expired image-cache entries are removed either way (on a
        whole-host audit). Returns the report, with ``reaped`` and
        ``not_reaped`` (each with its error) filled in.
        """
        log = self._log()
        with self._lock:  # no build is submitted until the removals are done
            report = inspect(self.conf, History(log), self.host, instances=instances)
            if reap:
                for finding in report.of(ORPHAN):
                    if unknown or not finding.unknown:
                        self._reap(report, finding)
            if not report.scope:
                self._expire(report)
        if not report.scope:
            self._record_findings(report)
            self.metrics.audited(report.counts())
        return report

    def audit_if_due(self, now: float | None = None) -> AuditReport | None:
        """Run the periodic audit (no orphan removed) once ``[audit] interval`` has passed.

        The first is one interval after the first call; None when none ran
        (not due, turned off with 0, or it failed: said in the log, and tried
        again one interval later).
        """
        interval = self.conf.audit.interval
        now = time.time() if now is None else now
        if interval <= 0:
            return None
        if self._audit_next_at is None:
            self._audit_next_at = now + interval
        if now < self._audit_next_at:
            return None
        self._audit_next_at = now + interval
        try:
            report = self.audit(reap=False)
        except Fenced as exc:
            self.lease.lost.set()
            LOG.error("host audit stopped: %s", exc)
            return None
        except Exception as exc:
            # An audit that fails (libvirtd restarting, the log away) must not
            # stop the agent's builds: said, then tried again next interval.
            LOG.warning("host audit failed (tried again in %ss): %s", interval, db.first_line(exc))
            LOG.debug("host audit failure", exc_info=True)
            return None
        _log_report(report)
        return report

    # -- removals ---------------------------------------------------------------------

    def _reap(self, report: AuditReport, finding: Finding) -> None:
        """Remove one orphan (or expired cache entry), announced in the log first."""
        self._record(REAP, finding.build_id, {**finding.to_dict(), "host": report.host})
        try:
            removed = self._remove(finding)
        except Exception as exc:
            error = db.first_line(exc)
            LOG.warning("host audit: cannot remove %s: %s", finding.what, error)
            report.not_reaped.append((finding, error))
            self._record(REAP_FAILED, finding.build_id, {**finding.to_dict(), "error": error})
            return
        if removed:
            LOG.info("host audit: removed %s (%s)", finding.what, finding.reason)
            report.reaped.append(finding)
        else:
            report.not_reaped.append((finding, "gone, changed or in use since the audit looked"))

    def _remove(self, f: Finding) -> bool:
        """Remove what ``f`` names if it is still the same one; True if it was removed."""
        r, host = f.resource, self.host
        if f.kind == CACHE_ENTRY and f.entry is not None:
            unused_since = time.time() - self.conf.images.cache_max_age
            return inventory_files.remove_entry(f.entry, self.images.lock_dir, unused_since)
        if f.kind == inventory_files.PARTIAL:
            return inventory_files.remove_partial(f.name, self.images.lock_dir)
        if r is None or f.build_id is None or f.instance_uuid is None:
            return False  # never anything without a marker
        if f.kind == inventory.DOMAIN:
            if domain.build_id(host, f.name) != f.build_id:
                return False
            domain.destroy(host, f.name)
            return domain.undefine(host, f.name)
        if f.kind == inventory.BINDING:
            return inventory.remove_binding(host, f.name)
        if f.kind == inventory.NWFILTER:
            NWFilterFirewall(host).teardown([f.name])
            return True
        if f.kind == inventory.TAP:
            if r.part == VIA_DOMAIN or r.part is None:
                return False  # libvirt's tap goes with its domain
            return inventory.remove_tagged_tap(f.name, f.instance_uuid, r.part, f.build_id)
        if f.kind == inventory.SECRET:
            return secrets.undefine(host, f.name)
        if f.kind == inventory_files.INSTANCE_DIR:
            return inventory_files.remove_instance_dir(r)
        return False

    def _expire(self, report: AuditReport) -> None:
        """Mark the cache entries in use; remove those unused past ``cache_max_age``."""
        for finding in report.findings:
            if finding.kind == CACHE_ENTRY and finding.entry is not None and finding.status == OK:
                inventory_files.mark_used(finding.entry)
        for finding in report.of(EXPIRED):
            self._reap(report, finding)

    # -- the log ----------------------------------------------------------------------

    def _record(self, state: str, build_id: str | None, payload: dict[str, Any]) -> None:
        log = self._log()
        with log.transaction() as conn:
            log.append(
                conn,
                kind=AUDIT,
                build_id=None,  # see history.host_audit
                subject=build_id,
                name=self.conf.host,
                to_state=state,
                payload=payload,
            )

    def _record_findings(self, report: AuditReport) -> None:
        """A ``FOUND`` event when the findings differ from the last this agent recorded."""
        payload = findings_payload(report)
        if payload == self._audit_recorded:
            return
        self._record(FOUND, None, payload)
        self._audit_recorded = payload


def _log_report(report: AuditReport) -> None:
    """What the periodic audit found, in the agent's log (one line per thing to act on)."""
    counts = report.counts()
    LOG.info(
        "host audit of %s: %s; %d stock nwfilters not listed",
        report.host,
        ", ".join(f"{n} {status}" for status, n in counts.items() if n),
        report.stock_filters,
    )
    for finding in report.of(ORPHAN, MISSING, LEFTOVER):
        LOG.warning("host audit: %s %s: %s", finding.status, finding.what, finding.reason)
    for finding in report.reaped:
        LOG.info("host audit: removed %s", finding.what)
