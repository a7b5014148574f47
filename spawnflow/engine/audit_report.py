"""What a host audit found: one ``Finding`` per resource, gathered in an ``AuditReport``.

The statuses are explained in ``engine.audit``; ``findings_payload`` is what
the agent records of a report in the log (``history.host_audit``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from spawnflow.virt import inventory, inventory_files
from spawnflow.virt.inventory import HostResource
from spawnflow.virt.inventory_files import CacheEntry

OK = "ok"
UNFINISHED_STATUS = "unfinished"
ORPHAN = "orphan"
LEFTOVER = "leftover"
FOREIGN = "foreign"
MISSING = "missing"
UNUSED = "unused"
EXPIRED = "expired"
#: What ``listed`` shows (and the table): what an operator may have to act on.
LISTED = (ORPHAN, MISSING, LEFTOVER, FOREIGN, EXPIRED)
CACHE_ENTRY = "cache_entry"
#: ``part`` of a tap libvirt made for a marked domain (it goes with the domain).
VIA_DOMAIN = "via domain"
# Removal order: a domain holds its taps, bindings and filters open.
_KIND_ORDER = (
    inventory.DOMAIN,
    inventory.BINDING,
    inventory.NWFILTER,
    inventory.TAP,
    inventory.SECRET,
    inventory_files.INSTANCE_DIR,
    inventory_files.PARTIAL,
    CACHE_ENTRY,
)
_STATUS_ORDER = (ORPHAN, MISSING, LEFTOVER, EXPIRED, FOREIGN, UNFINISHED_STATUS, UNUSED, OK)
WORDS = {inventory_files.INSTANCE_DIR: "instance directory", CACHE_ENTRY: "image-cache entry"}


@dataclass(frozen=True)
class Finding:
    """One resource and what the audit makes of it (``status``, and ``reason`` in words)."""

    status: str
    kind: str
    name: str
    build_id: str | None = None
    instance_uuid: str | None = None
    reason: str = ""
    resource: HostResource | None = field(default=None, compare=False, repr=False)
    unknown: bool = False  # an orphan whose marker names no build of this host in the log
    entry: CacheEntry | None = field(default=None, compare=False, repr=False)

    @property
    def what(self) -> str:
        """``tap tap3f0c...``: the kind in words, then the name."""
        return f"{WORDS.get(self.kind, self.kind)} {self.name}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "kind": self.kind,
            "name": self.name,
            "build_id": self.build_id,
            "instance_uuid": self.instance_uuid,
            "reason": self.reason,
            "unknown_build": self.unknown,
        }


@dataclass
class AuditReport:
    """What one audit found on ``host`` at ``at``, and what it removed (``reaped``)."""

    host: str
    at: float
    findings: list[Finding]
    stock_filters: int = 0
    scope: tuple[str, ...] = ()  # instance uuids; empty: the whole host
    cache_note: str | None = None  # why no cache entry may be removed now
    reaped: list[Finding] = field(default_factory=list)
    not_reaped: list[tuple[Finding, str]] = field(default_factory=list)

    def of(self, *statuses: str) -> list[Finding]:
        return [f for f in self.findings if f.status in statuses]

    def listed(self) -> list[Finding]:
        """What an operator may have to act on (``LISTED``), orphans first."""
        return self.of(*LISTED)

    def counts(self) -> dict[str, int]:
        """Findings per status (every status, zeros included)."""
        counts = dict.fromkeys(_STATUS_ORDER, 0)
        for finding in self.findings:
            counts[finding.status] = counts.get(finding.status, 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "at": self.at,
            "scope": list(self.scope),
            "counts": self.counts(),
            "stock_nwfilters": self.stock_filters,
            "cache_note": self.cache_note,
            "findings": [f.to_dict() for f in self.findings],
            "reaped": [f.to_dict() for f in self.reaped],
            "not_reaped": [{**f.to_dict(), "error": error} for f, error in self.not_reaped],
        }


def sort_key(f: Finding) -> tuple[int, int, str]:
    return _STATUS_ORDER.index(f.status), _KIND_ORDER.index(f.kind), f.name


def findings_payload(report: AuditReport, limit: int = 50) -> dict[str, Any]:
    """What a ``FOUND`` event records: counts, what each ACTIVE build lacks, some names."""
    missing: dict[str, list[str]] = {}
    for f in report.of(MISSING):
        missing.setdefault(f.build_id or "", []).append(f.what)

    def names(status: str) -> list[str]:
        return [f"{f.what} ({f.build_id or 'no build'})" for f in report.of(status)[:limit]]

    return {
        "counts": report.counts(),
        "missing": missing,
        "orphans": names(ORPHAN),
        "leftovers": names(LEFTOVER),
    }
