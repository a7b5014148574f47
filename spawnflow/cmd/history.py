"""``spawnflow history list|show|events|export|import|timeline|purge|stats``.

Every command takes ``--db URL`` (or a SQLite file path) instead of the
configured ``[database] connection``. Listings take cliff's ``-f``: the table
is a compact view that fits 80 columns (short build ids, shortened names and
errors, UTC times); json, yaml, csv and value give every field in full
(ISO 8601 times, durations in seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any

from cliff.command import Command
from cliff.lister import Lister

from spawnflow import conf as sf_conf
from spawnflow.cmd.formatting import (
    clock,
    clock_ms,
    fit,
    human,
    iso,
    rounded,
    safe,
    short_stamp,
    shorten,
    stamp,
    table_width,
    took,
    wrap,
)
from spawnflow.exceptions import PersistenceError, SpawnflowError
from spawnflow.history import BuildHistory, Event, History, parse_time
from spawnflow.persistence import export as sf_export
from spawnflow.persistence import lifecycle, retention
from spawnflow.persistence.eventlog import EventLog

STEP_COLUMNS = ("Step", "State", "Start", "Took", "Revert", "Try", "Error")
STEP_FULL_COLUMNS = (
    "Step",
    "State",
    "Start",
    "End",
    "Duration",
    "Attempts",
    "Revert Start",
    "Revert End",
    "Revert Duration",
    "Error",
    "Revert Error",
)


# -- shared pieces ------------------------------------------------------------------------


def db_url(value: str | None, conf: Any) -> str:
    """``--db`` (a URL, or a path taken as a SQLite file) or the configured database."""
    if not value:
        return sf_conf.database_url(conf)
    if "://" in value:
        return value
    return "sqlite:///" + os.path.abspath(value)


def time_arg(text: str) -> float:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def state_arg(text: str) -> list[str]:
    states = [s.strip().upper() for s in text.split(",") if s.strip()]
    unknown = [s for s in states if s not in lifecycle.STATES]
    if unknown or not states:
        raise argparse.ArgumentTypeError(
            f"unknown state {', '.join(unknown) or repr(text)}; one of "
            f"{', '.join(sorted(lifecycle.STATES))}"
        )
    return states


def add_db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db", metavar="URL", help="database URL or SQLite file (default: [database] connection)"
    )


def is_table(parsed_args: argparse.Namespace) -> bool:
    return getattr(parsed_args, "formatter", "table") == "table"


def wants_objects(parsed_args: argparse.Namespace) -> bool:
    return getattr(parsed_args, "formatter", "table") in ("json", "yaml")


class _HistoryCommand(Lister):
    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        add_db_option(parser)
        return parser

    def open_history(self, parsed_args) -> History:
        return History.open(db_url(parsed_args.db, self.app.conf))

    def produce_output(self, parsed_args, column_names, data):
        if not wants_objects(parsed_args):
            # table, csv and value print strings as they are; json and yaml escape
            # every control and non-ASCII character themselves.
            data = [tuple(safe(v) if isinstance(v, str) else v for v in row) for row in data]
        result = super().produce_output(parsed_args, column_names, data)
        footer = getattr(self, "_footer", None)
        if footer and is_table(parsed_args):
            self.app.stdout.write(safe(footer) + "\n")
        return result


# -- show -----------------------------------------------------------------------------------


def step_rows(build: BuildHistory, width: int | None = None) -> list[tuple]:
    """The compact 80-column step table (STEP_COLUMNS)."""
    rows = [
        (
            step.name,
            step.state,
            clock(step.started_at),
            took(step.duration),
            took(step.revert_duration),
            step.attempts or "-",
            step.revert_error or step.error or "",
        )
        for step in build.steps
    ]
    return fit(STEP_COLUMNS, rows, {"Error": 5, "Step": 8}, width)


def step_full_rows(build: BuildHistory) -> list[tuple]:
    return [
        (
            s.name,
            s.state,
            iso(s.started_at),
            iso(s.ended_at),
            rounded(s.duration, 6),
            s.attempts,
            iso(s.revert_started_at),
            iso(s.revert_ended_at),
            rounded(s.revert_duration, 6),
            s.error,
            s.revert_error,
        )
        for s in build.steps
    ]


def _recovery_lines(build: BuildHistory, width: int) -> list[str]:
    lines = []
    for gap in build.interruptions:
        where = ", ".join(gap.steps) or "between steps"
        text = f"interrupted at {where} (last event {clock(gap.last_seen)}, marked {clock(gap.at)})"
        if gap.resumed_as == lifecycle.RUNNING:
            text += f", resumed {clock(gap.resumed_at)}"
        elif gap.resumed_as == lifecycle.REVERTING:
            text += f", rolled back from {clock(gap.resumed_at)}"
        lines += wrap("recovery", text, width)
    return lines


def summary(build: BuildHistory, width: int | None = None, brief: bool = False) -> str:
    """The lines above the step table: who, where, outcome, errors, recovery.

    ``brief`` leaves out the build's error (a diagnosis printed below repeats it).
    """
    width = width or table_width()
    lines = [
        f"build     {build.build_id}",
        f"instance  {build.instance_uuid} {shorten(build.instance_name, 30)}",
        f"host      {shorten(build.host, 30)}  created {stamp(build.created_at)}",
        f"state     {build.state}  (" + " -> ".join(t.to_state for t in build.lifecycle) + ")",
    ]
    if build.duration is not None:
        lines.append(f"took      {human(build.duration)}  (finished {stamp(build.finished_at)})")
    if build.error and not brief:
        lines += wrap("error", build.error, width)
    failed = build.failed_step
    if failed and build.step(failed).error != build.error and not brief:
        lines += wrap("failed", f"{failed}: {build.step(failed).error}", width)
    for name in build.revert_failed_steps:
        lines += wrap("revert", f"{name}: {build.step(name).revert_error}", width)
    lines += _recovery_lines(build, width)
    return "\n".join(safe(line) for line in lines)


def diagnosis_of(build: BuildHistory, conf: Any) -> str:
    return build.diagnose(
        vif_plugging_timeout=conf.network.vif_plugging_timeout,
        recovery_policy=conf.recovery.policy,
        resume_window=conf.recovery.resume_window,
        lease_seconds=getattr(conf.recovery, "lease_seconds", None),
    ).text


class HistoryShow(_HistoryCommand):
    """Show one build: its outcome and recovery, then one row per step.

    BUILD_ID may be a unique prefix. Columns (table): Took is the forward run,
    Revert the rollback of the step, Try the forward attempts. Times are UTC.
    """

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("build_id", metavar="BUILD_ID", help="build id or unique prefix")
        parser.add_argument(
            "--diagnose",
            action="store_true",
            help="say in words what the build waits for or why it failed "
            "(to stderr with -f json|yaml|csv|value)",
        )
        return parser

    def take_action(self, parsed_args):
        with self.open_history(parsed_args) as history:
            build = history.build(parsed_args.build_id)
        width = table_width()
        text = diagnosis_of(build, self.app.conf) if parsed_args.diagnose else None
        if is_table(parsed_args):
            self.app.stdout.write(summary(build, width, brief=bool(text)) + "\n")
            if text:
                self.app.stdout.write("\n".join(wrap("diagnosis", text, width)) + "\n")
            return STEP_COLUMNS, step_rows(build, width)
        if text:
            self.app.stderr.write(safe(text) + "\n")
        return STEP_FULL_COLUMNS, step_full_rows(build)


# -- list -----------------------------------------------------------------------------------

LIST_COLUMNS = ("Build", "State", "Instance", "Host", "Started", "Took", "Failed step")
LIST_FULL_COLUMNS = (
    "Build",
    "State",
    "Instance UUID",
    "Instance",
    "Host",
    "Started",
    "Finished",
    "Duration",
    "Failed Step",
    "Error",
)


class HistoryList(_HistoryCommand):
    """List builds, newest first (8-character ids in the table; `show` takes prefixes).

    Pages: --limit N (0: all), then --marker LAST_BUILD_ID for the next page.
    Times for --since/--until: ISO 8601 (UTC unless an offset is given) or an
    age such as 90m, 2h, 7d.
    """

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "--state",
            type=state_arg,
            action="append",
            metavar="STATE",
            help="only builds in this lifecycle state (repeatable, or a,b)",
        )
        parser.add_argument("--instance", metavar="UUID_OR_NAME")
        parser.add_argument("--host")
        parser.add_argument(
            "--since", type=time_arg, metavar="TIME", help="created at or after TIME"
        )
        parser.add_argument("--until", type=time_arg, metavar="TIME", help="created before TIME")
        parser.add_argument(
            "--failed-step", metavar="STEP", help="only builds whose forward run failed at STEP"
        )
        parser.add_argument("--limit", type=int, default=50, help="page size (0: all)")
        parser.add_argument(
            "--marker",
            metavar="BUILD_ID",
            help="continue after this build (the last of the previous page)",
        )
        return parser

    def take_action(self, parsed_args):
        if parsed_args.limit < 0:
            raise PersistenceError("--limit must be >= 0")
        states = [s for group in parsed_args.state or [] for s in group] or None
        with self.open_history(parsed_args) as history:
            rows = history.builds(
                state=states,
                instance=parsed_args.instance,
                host=parsed_args.host,
                since=parsed_args.since,
                until=parsed_args.until,
                failed_step=parsed_args.failed_step,
                limit=parsed_args.limit or None,
                marker=parsed_args.marker,
            )
        if parsed_args.limit and len(rows) == parsed_args.limit:
            self._footer = f"next page: --marker {rows[-1].build_id}"
        if is_table(parsed_args):
            table = [
                (
                    r.build_id[:8],
                    r.state,
                    r.instance_name,
                    r.host,
                    short_stamp(r.created_at),
                    took(r.duration),
                    r.failed_step or "",
                )
                for r in rows
            ]
            return LIST_COLUMNS, fit(
                LIST_COLUMNS, table, {"Instance": 8, "Host": 4, "Failed step": 6}
            )
        return LIST_FULL_COLUMNS, [
            (
                r.build_id,
                r.state,
                r.instance_uuid,
                r.instance_name,
                r.host,
                iso(r.created_at),
                iso(r.finished_at),
                rounded(r.duration, 6),
                r.failed_step,
                r.error,
            )
            for r in rows
        ]


# -- events ---------------------------------------------------------------------------------

EVENT_COLUMNS = ("Seq", "Time", "Kind", "Name", "Change", "Payload")
EVENT_FULL_COLUMNS = ("Seq", "Time", "Kind", "Subject", "Name", "From", "To", "Payload")
_QUIET_KEYS = {"state", "uuid", "name", "version", "parent", "type", "tag", "status"}


def _brief(value: Any) -> str:
    names = value.get("exc_type_names") if isinstance(value, dict) else None
    if isinstance(names, list) and names:
        return str(names[0]).rsplit(".", 1)[-1]
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def payload_summary(event: Event) -> str:
    """The payload in a few words: what changed, without what the columns already say."""
    payload = event.payload
    if not isinstance(payload, dict):
        return "" if payload is None else _brief(payload)
    # An older or damaged row may hold any JSON where an object belongs.
    if "set" in payload:
        fields = dict(payload["set"]) if isinstance(payload["set"], dict) else {}
    else:
        fields = dict(payload)
    if "spec" in fields:
        spec = fields.pop("spec")
        spec = spec if isinstance(spec, dict) else {}
        flavor = spec.get("flavor") if isinstance(spec.get("flavor"), dict) else {}
        fields["spec"] = (
            f"{flavor.get('vcpus', '?')}vcpu/{flavor.get('memory_mb', '?')}MB "
            f"{_count(spec.get('vifs'))}vif {_count(spec.get('volumes'))}vol"
        )
    if isinstance(fields.get("meta"), dict) and set(fields["meta"]) == {"progress"}:
        fields["progress"] = fields.pop("meta")["progress"]
    if event.kind in ("atom", "flow") and event.from_state is None:
        return "created"
    parts = [
        f"{key}={_brief(value)}"
        for key, value in sorted(fields.items())
        if key not in _QUIET_KEYS and value is not None
    ]
    unset = payload.get("unset")
    for key in unset if isinstance(unset, list) else []:
        parts.append(f"-{key}")
    return ", ".join(parts)


def _count(value: Any) -> int:
    return len(value) if isinstance(value, list) else 0


class HistoryEvents(_HistoryCommand):
    """The raw events of one build, in log order (seq, time, kind, name, from→to, payload)."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("build_id", metavar="BUILD_ID", help="build id or unique prefix")
        parser.add_argument(
            "--kind",
            action="append",
            choices=["build", "logbook", "flow", "atom", "external"],
            help="only events of this kind (repeatable)",
        )
        return parser

    def take_action(self, parsed_args):
        with self.open_history(parsed_args) as history:
            events = history.events(parsed_args.build_id)
        if parsed_args.kind:
            events = [e for e in events if e.kind in parsed_args.kind]
        if is_table(parsed_args):
            rows = [
                (
                    e.seq,
                    clock_ms(e.at),
                    e.kind,
                    e.name or "",
                    f"{e.from_state or ''}→{e.to_state or ''}"
                    if (e.from_state or e.to_state)
                    else "",
                    payload_summary(e),
                )
                for e in events
            ]
            return EVENT_COLUMNS, fit(EVENT_COLUMNS, rows, {"Name": 8, "Change": 18, "Payload": 8})
        objects = wants_objects(parsed_args)
        return EVENT_FULL_COLUMNS, [
            (
                e.seq,
                iso(e.at),
                e.kind,
                e.subject,
                e.name,
                e.from_state,
                e.to_state,
                e.payload if objects else json.dumps(e.payload, sort_keys=True),
            )
            for e in events
        ]


# -- export / import ------------------------------------------------------------------------


class HistoryExport(Command):
    """Write one build's history as a self-contained JSON document (events + build row)."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        add_db_option(parser)
        parser.add_argument("build_id", metavar="BUILD_ID", help="build id or unique prefix")
        parser.add_argument("-o", "--output", metavar="FILE", help="file (default: stdout)")
        return parser

    def take_action(self, parsed_args):
        with History.open(db_url(parsed_args.db, self.app.conf)) as history:
            doc = history.export(parsed_args.build_id)
        text = sf_export.dumps(doc)
        if parsed_args.output in (None, "-"):
            self.app.stdout.write(text)
            return 0
        _write_atomically(parsed_args.output, text.encode())
        self.app.stderr.write(
            f"exported build {safe(doc['build']['build_id'])} "
            f"({len(doc['events'])} events) to {parsed_args.output}\n"
        )
        return 0


def _write_atomically(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by its owner only (0600), all or nothing.

    An export holds a build's spec, errors and host layout. The bytes go to a
    new file made by ``mkstemp`` beside ``path`` (O_CREAT|O_EXCL|O_NOFOLLOW,
    mode 0600, an unguessable name: no symlink planted in advance is followed),
    which then replaces ``path`` by rename. A rename replaces a symlink at
    ``path`` itself, so the file a link points to is never written.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(
            dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
        )
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o600)  # mkstemp's mode, made explicit
            out.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise PersistenceError(f"cannot write {path}: {exc.strerror or exc}") from None


class HistoryImport(Command):
    """Load an exported build into this (or --db) database; refuses a build already there.

    The target must be a spawnflow database (an empty one is upgraded first).
    Unfinished builds are refused unless --allow-unfinished: an agent owning
    their host would try to recover them.
    """

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        add_db_option(parser)
        parser.add_argument("file", metavar="FILE", help="export document ('-': stdin)")
        parser.add_argument(
            "--allow-unfinished",
            action="store_true",
            help="import a build that is not in a final state",
        )
        return parser

    def take_action(self, parsed_args):
        source = parsed_args.file
        try:
            if source == "-":
                doc = sf_export.read(sys.stdin.buffer, "stdin")
            else:
                with open(source, "rb") as stream:
                    doc = sf_export.read(stream, source)  # checked before the target opens
        except OSError as exc:
            raise PersistenceError(f"cannot read {source}: {exc.strerror or exc}") from None
        url = db_url(parsed_args.db, self.app.conf)
        eventlog = EventLog.open(url)
        try:
            build_id = sf_export.import_build(
                eventlog, doc, allow_unfinished=parsed_args.allow_unfinished
            )
        finally:
            eventlog.close()
        self.app.stdout.write(
            f"imported build {safe(build_id)} "
            f"({safe(doc['build'].get('state'))}, {len(doc['events'])} "
            "events)\n"
        )
        return 0


# -- timeline -------------------------------------------------------------------------------


class HistoryTimeline(Command):
    """Draw one build as a Gantt chart: SVG or a self-contained HTML page.

    Forward runs, reverts (another colour), interruptions and event waits; the
    format follows the file's extension (.svg, .html) unless --format says.
    """

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        add_db_option(parser)
        parser.add_argument("build_id", metavar="BUILD_ID", help="build id or unique prefix")
        parser.add_argument(
            "-o", "--output", metavar="FILE", required=True, help="FILE.svg or FILE.html"
        )
        parser.add_argument(
            "--format", choices=["svg", "html"], help="default: from the file's extension"
        )
        return parser

    def take_action(self, parsed_args):
        from spawnflow.cmd import timeline

        kind = parsed_args.format or os.path.splitext(parsed_args.output)[1].lower().lstrip(".")
        if kind == "htm":
            kind = "html"
        if kind not in ("svg", "html"):
            raise SpawnflowError(
                f"cannot tell the format of {parsed_args.output}: name it "
                ".svg or .html, or give --format svg|html"
            )
        with History.open(db_url(parsed_args.db, self.app.conf)) as history:
            build = history.build(parsed_args.build_id)
        conf = self.app.conf
        options = {
            "vif_plugging_timeout": conf.network.vif_plugging_timeout,
            "diagnosis": diagnosis_of(build, conf),
        }
        data = (
            timeline.render_svg(build, **options)
            if kind == "svg"
            else timeline.render_html(build, **options)
        )
        _write_atomically(parsed_args.output, data)
        self.app.stdout.write(f"wrote {parsed_args.output} ({kind}, {len(build.steps)} steps)\n")
        return 0


# -- purge ----------------------------------------------------------------------------------


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("days must be >= 0")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


class HistoryPurge(Command):
    """Delete finished builds (ACTIVE, ROLLED_BACK, FAILED) that finished over DAYS ago.

    Their events and projection rows go with them, in batches of --batch-size
    builds, each its own short transaction. Unfinished builds are never touched.
    """

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        add_db_option(parser)
        parser.add_argument("--older-than", type=_days, required=True, metavar="DAYS")
        parser.add_argument(
            "--batch-size",
            type=_positive,
            default=500,
            metavar="N",
            help="builds per transaction (default 500)",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="only count what would be removed"
        )
        return parser

    def take_action(self, parsed_args):
        eventlog = EventLog.open(db_url(parsed_args.db, self.app.conf), upgrade=False)
        try:
            if parsed_args.dry_run:
                count = retention.count_purgeable(eventlog, parsed_args.older_than)
                self.app.stdout.write(
                    f"would remove {count} finished builds older than "
                    f"{parsed_args.older_than:g} days\n"
                )
                return 0
            removed = retention.purge(
                eventlog, parsed_args.older_than, batch_size=parsed_args.batch_size
            )
        finally:
            eventlog.close()
        self.app.stdout.write(
            f"removed {removed} finished builds older than {parsed_args.older_than:g} days\n"
        )
        return 0


# -- stats ----------------------------------------------------------------------------------

STATS_COLUMNS = ("Step", "Runs", "Failed", "p50", "p95", "Max", "Reverts", "Revert p50")
STATS_FULL_COLUMNS = (
    "Step",
    "Runs",
    "Failed",
    "p50",
    "p95",
    "Max",
    "Reverts",
    "Revert p50",
    "Revert p95",
)
STATE_COLUMNS = ("State", "Builds")


class HistoryStats(_HistoryCommand):
    """Builds per state, and per step p50/p95/max durations (forward and revert).

    Reads every step change of the selected builds; narrow it on a large log
    with --since/--until/--host/--state. --by state lists only the counts.
    """

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("--since", type=time_arg, metavar="TIME")
        parser.add_argument("--until", type=time_arg, metavar="TIME")
        parser.add_argument("--host")
        parser.add_argument("--state", type=state_arg, action="append", metavar="STATE")
        parser.add_argument(
            "--by",
            choices=["step", "state"],
            default="step",
            help="rows per step (default) or per build state",
        )
        return parser

    def take_action(self, parsed_args):
        states = [s for group in parsed_args.state or [] for s in group] or None
        with self.open_history(parsed_args) as history:
            stats = history.stats(
                since=parsed_args.since,
                until=parsed_args.until,
                host=parsed_args.host,
                state=states,
            )
        if parsed_args.by == "state":
            return STATE_COLUMNS, sorted(stats.builds.items())
        if is_table(parsed_args):
            counts = ", ".join(f"{state} {n}" for state, n in stats.builds.items()) or "none"
            self.app.stdout.write("\n".join(wrap("builds", f"{stats.total} ({counts})")) + "\n")
            return STATS_COLUMNS, [
                (
                    s.name,
                    s.runs,
                    s.failures,
                    took(s.p50),
                    took(s.p95),
                    took(s.max),
                    s.reverts,
                    took(s.revert_p50),
                )
                for s in stats.steps
            ]
        return STATS_FULL_COLUMNS, [
            (
                s.name,
                s.runs,
                s.failures,
                rounded(s.p50, 6),
                rounded(s.p95, 6),
                rounded(s.max, 6),
                s.reverts,
                rounded(s.revert_p50, 6),
                rounded(s.revert_p95, 6),
            )
            for s in stats.steps
        ]
