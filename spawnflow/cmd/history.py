"""``spawnflow history show|list``: read the build history from the event log."""

from __future__ import annotations

import textwrap

from cliff.lister import Lister

from spawnflow import conf as sf_conf
from spawnflow.cmd.formatting import clock, seconds, shorten, stamp
from spawnflow.history import BuildHistory, History

STEP_COLUMNS = ("Step", "State", "Start", "Duration", "Try", "Error")
WIDTH = 80  # operators read this on a console at 3 am


def step_rows(build: BuildHistory) -> list[tuple]:
    return [(step.name, step.state, clock(step.started_at), seconds(step.duration),
             step.attempts, shorten(step.error, 22)) for step in build.steps]


def summary(build: BuildHistory) -> str:
    lines = [f"build     {build.build_id}",
             f"instance  {build.instance_uuid} {shorten(build.instance_name, 30)}",
             f"host      {shorten(build.host, 30)}  created {stamp(build.created_at)}",
             f"state     {build.state}  ("
             + " -> ".join(t.to_state for t in build.lifecycle) + ")"]
    if build.error:
        lines += textwrap.wrap(build.error, WIDTH, initial_indent="error     ",
                               subsequent_indent=" " * 10)
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
        columns = ("Build", "State", "Instance", "Created")
        return columns, [(r.build_id, r.state, shorten(r.instance_name, 12),
                          stamp(r.created_at)) for r in rows]
