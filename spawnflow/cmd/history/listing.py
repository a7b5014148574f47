"""``spawnflow history list``: builds, newest first, a page at a time."""

from __future__ import annotations

import argparse
from typing import Any

from spawnflow.cmd.base import HistoryLister, is_table
from spawnflow.cmd.options import state_arg, time_arg
from spawnflow.cmd.render.text import fit
from spawnflow.cmd.render.times import Duration, Stamp, duration, iso, rounded, timestamp
from spawnflow.exceptions import PersistenceError
from spawnflow.history import BuildSummary

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


def _table_rows(rows: list[BuildSummary]) -> list[tuple[Any, ...]]:
    table = [
        (
            r.build_id[:8],
            r.state,
            r.instance_name,
            r.host,
            timestamp(r.created_at, Stamp.SHORT),
            duration(r.duration, Duration.COLUMN),
            r.failed_step or "",
        )
        for r in rows
    ]
    return fit(LIST_COLUMNS, table, {"Instance": 8, "Host": 4, "Failed step": 6})


def _full_rows(rows: list[BuildSummary]) -> list[tuple[Any, ...]]:
    return [
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


class HistoryList(HistoryLister):
    """List builds, newest first (8-character ids in the table; `show` takes prefixes).

    Pages: --limit N (0: all), then --marker LAST_BUILD_ID for the next page.
    Times for --since/--until: ISO 8601 (UTC unless an offset is given) or an
    age such as 90m, 2h, 7d.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
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

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], Any]:
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
            self.footer = f"next page: --marker {rows[-1].build_id}"
        if is_table(parsed_args):
            return LIST_COLUMNS, _table_rows(rows)
        return LIST_FULL_COLUMNS, _full_rows(rows)
