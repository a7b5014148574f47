"""``spawnflow host audit [--reap]``: what is on this host, compared with the event log.

Without ``--reap`` it only reads (``engine.audit.audit_host``: no lease, so it
works beside a running agent). With ``--reap`` it runs an agent in this
process, as ``spawnflow spawn`` does, to remove the orphans under the host
lease (``Agent.audit``); it refuses while another agent owns the host.
"""

from __future__ import annotations

import argparse
import uuid
from typing import Any

from spawnflow import Agent
from spawnflow.cmd.base import HistoryLister, is_table
from spawnflow.engine.audit import LISTED, AuditReport, Finding, audit_host
from spawnflow.exceptions import HostOwned, SpawnflowError

COLUMNS = ("Status", "Kind", "Name", "Build", "Instance", "Reason", "Reaped")


def _row(finding: Finding, report: AuditReport) -> tuple[Any, ...]:
    reaped = ""
    if finding in report.reaped:
        reaped = "removed"
    for failed, error in report.not_reaped:
        if failed == finding:
            reaped = f"not removed: {error}"
    return (
        finding.status,
        finding.kind,
        finding.name,
        finding.build_id or "",
        finding.instance_uuid or "",
        finding.reason,
        reaped,
    )


def _footer(report: AuditReport) -> str:
    counts = ", ".join(f"{n} {status}" for status, n in report.counts().items() if n)
    text = f"host {report.host}: {counts or 'nothing found'}"
    text += f"; {report.stock_filters} libvirt stock nwfilters not listed"
    if report.scope:
        text += f"; only instance(s) {', '.join(report.scope)}"
    if report.cache_note:
        text += f"; {report.cache_note}"
    if report.reaped or report.not_reaped:
        text += f"; removed {len(report.reaped)}, not removed {len(report.not_reaped)}"
    return text


class HostAudit(HistoryLister):
    """Compare this host's domains, taps, secrets, nwfilters, filter bindings, instance
    directories and image cache with the event log.

    Lists orphans (spawnflow's marker, but the log says removed, or names no
    build of this host), missing resources of ACTIVE instances, leftovers of
    FAILED builds, foreign resources (no marker: never touched) and expired
    image-cache entries; --all lists everything. --reap removes the orphans
    (those of builds the log does not have only with --unknown) and expired
    cache entries, each removal recorded in the log.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "--reap",
            action="store_true",
            help="remove the orphans and expired image-cache entries (takes the host "
            "lease: refused while the agent of this host runs)",
        )
        parser.add_argument(
            "--unknown",
            action="store_true",
            help="with --reap, also remove orphans whose marker names a build this "
            "host's log does not have (check [database] connection first: with the "
            "wrong database every VM of the host looks like one)",
        )
        parser.add_argument(
            "--instance",
            action="append",
            default=[],
            metavar="UUID",
            help="only this instance's resources (repeatable); no foreign ones, no image cache",
        )
        parser.add_argument(
            "--all",
            action="store_true",
            help="also list what is in order (ok, unfinished, unused cache entries)",
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], Any]:
        parsed_args.instance = [_instance(text) for text in parsed_args.instance or []]
        if parsed_args.reap:
            if getattr(parsed_args, "db", None):
                raise SpawnflowError("--reap works on the configured database only, not --db")
            report = self._reap(parsed_args.instance, parsed_args.unknown)
        else:
            conf = self.conf
            if getattr(parsed_args, "db", None):
                conf.set_override("connection", self.db_url(parsed_args), group="database")
            report = audit_host(conf, instances=parsed_args.instance)
        shown = report.findings if parsed_args.all else report.of(*LISTED)
        if is_table(parsed_args):
            self.footer = _footer(report)
        return COLUMNS, [_row(f, report) for f in shown]

    def _reap(self, instances: list[str], unknown: bool) -> AuditReport:
        agent = Agent(self.conf)
        try:
            agent.start()
        except HostOwned as exc:
            raise HostOwned(
                f"{exc}; --reap removes orphans under the host lease, so it runs only "
                "while no agent owns this host (stop it, or run `spawnflow host audit` "
                "without --reap: read-only, it works beside the agent)"
            ) from None
        try:
            return agent.audit(reap=True, instances=instances, unknown=unknown)
        finally:
            agent.stop()


def _instance(text: str) -> str:
    """An ``--instance`` value as an instance uuid (canonical form), or a clear refusal."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise SpawnflowError(f"--instance: {text!r} is not an instance uuid") from None
