"""``spawnflow history show|list``: read the build history from the event log."""

from __future__ import annotations

from cliff.lister import Lister

from spawnflow import conf as sf_conf
from spawnflow.cmd.formatting import clock, seconds, shorten, stamp
from spawnflow.history import BuildHistory, History

STEP_COLUMNS = ("Step", "State", "Start", "End", "Duration", "Try", "Error")


def step_rows(build: BuildHistory) -> list[tuple]:
    rows = []
    for step in build.steps:
        rows.append((step.name, step.state, clock(step.started_at), clock(step.ended_at),
                     seconds(step.duration), step.attempts, shorten(step.error)))
    return rows


def summary(build: BuildHistory) -> str:
    lines = [f"build {build.build_id}  instance {build.instance_uuid} ({build.instance_name})",
             f"host {build.host}  state {build.state}  created {stamp(build.created_at)}"]
    path = " -> ".join(t.to_state for t in build.lifecycle)
    lines.append(f"lifecycle: {path}")
    if build.error:
        lines.append(f"error: {build.error}")
    return "\n".join(lines)


class _HistoryCommand(Lister):
    def get_parser(self, prog_name):  # noqa: ANN001
        parser = super().get_parser(prog_name)
        parser.add_argument("--db", metavar="URL",
                            help="history database URL (default: [database] connection)")
        return parser

    def open_history(self, parsed_args) -> History:  # noqa: ANN001
        return History.open(parsed_args.db or sf_conf.database_url(self.app.conf))


class HistoryShow(_HistoryCommand):
    """Show one build, one row per step, with its outcome."""

    def get_parser(self, prog_name):  # noqa: ANN001
        parser = super().get_parser(prog_name)
        parser.add_argument("build_id", metavar="BUILD_ID")
        return parser

    def take_action(self, parsed_args):  # noqa: ANN001
        with self.open_history(parsed_args) as history:
            build = history.build(parsed_args.build_id)
        if parsed_args.formatter == "table":
            self.app.stdout.write(summary(build) + "\n")
        return STEP_COLUMNS, step_rows(build)


class HistoryList(_HistoryCommand):
    """List builds, newest first."""

    def get_parser(self, prog_name):  # noqa: ANN001
        parser = super().get_parser(prog_name)
        parser.add_argument("--limit", type=int, default=50)
        return parser

    def take_action(self, parsed_args):  # noqa: ANN001
        with self.open_history(parsed_args) as history:
            rows = history.builds(limit=parsed_args.limit)
        columns = ("Build", "State", "Instance", "Host", "Created", "Error")
        return columns, [(r.build_id, r.state, shorten(r.instance_name, 20), r.host,
                          stamp(r.created_at), shorten(r.error, 30)) for r in rows]
