"""``spawnflow history stats``: builds per state, and per step how long runs and reverts took."""

from __future__ import annotations

import argparse
from typing import Any

from spawnflow.cmd.base import HistoryLister, is_table
from spawnflow.cmd.options import state_arg, time_arg
from spawnflow.cmd.render.text import wrap
from spawnflow.cmd.render.times import Duration, duration, rounded
from spawnflow.history import Stats, lifecycle

STATS_COLUMNS = ("Step", "Runs", "Failed", "p50", "p95", "Max", "Reverts", "Revert p50")
STATS_FULL_COLUMNS = (*STATS_COLUMNS, "Revert p95")
STATE_COLUMNS = ("State", "Builds")
HOST_COLUMNS = ("Host", "Builds", "ACTIVE", "ROLLED_BACK", "FAILED", "DELETED", "Unfinished")


def _host_rows(stats: Stats) -> list[tuple[Any, ...]]:
    rows = []
    for host, counts in stats.hosts.items():
        done = sum(counts.get(state, 0) for state in lifecycle.FINAL)
        rows.append(
            (
                host,
                sum(counts.values()),
                *(counts.get(state, 0) for state in HOST_COLUMNS[2:6]),
                sum(counts.values()) - done,
            )
        )
    return rows


def _table_rows(stats: Stats) -> list[tuple[Any, ...]]:
    def took(value: float | None) -> str:
        return duration(value, Duration.COLUMN)

    return [
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


def _full_rows(stats: Stats) -> list[tuple[Any, ...]]:
    return [
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


class HistoryStats(HistoryLister):
    """Builds per state, and per step p50/p95/max durations (forward and revert).

    Reads every step change of the selected builds; narrow it on a large log
    with --since/--until/--host/--state. --by state lists only the counts.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("--since", type=time_arg, metavar="TIME")
        parser.add_argument("--until", type=time_arg, metavar="TIME")
        parser.add_argument("--host")
        parser.add_argument("--state", type=state_arg, action="append", metavar="STATE")
        parser.add_argument(
            "--by",
            choices=["step", "state", "host"],
            default="step",
            help="rows per step (default), per build state, or per host (a fleet on one log)",
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], Any]:
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
        if parsed_args.by == "host":
            return HOST_COLUMNS, _host_rows(stats)
        if is_table(parsed_args):
            counts = ", ".join(f"{state} {n}" for state, n in stats.builds.items()) or "none"
            self.app.stdout.write("\n".join(wrap("builds", f"{stats.total} ({counts})")) + "\n")
            return STATS_COLUMNS, _table_rows(stats)
        return STATS_FULL_COLUMNS, _full_rows(stats)
