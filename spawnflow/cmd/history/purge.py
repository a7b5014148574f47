"""``spawnflow history purge --older-than DAYS``: retention of finished builds."""

from __future__ import annotations

import argparse

from spawnflow.cmd.base import Command
from spawnflow.cmd.options import add_db_option, days_arg, positive_arg
from spawnflow.history import count_purgeable, purge


class HistoryPurge(Command):
    """Delete finished builds (ACTIVE, ROLLED_BACK, FAILED) that finished over DAYS ago.

    Their events and projection rows go with them, in batches of --batch-size
    builds, each its own short transaction. Unfinished builds are never touched.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        add_db_option(parser)
        parser.add_argument("--older-than", type=days_arg, required=True, metavar="DAYS")
        parser.add_argument(
            "--batch-size",
            type=positive_arg,
            default=500,
            metavar="N",
            help="builds per transaction (default 500)",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="only count what would be removed"
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        url, days = self.db_url(parsed_args), parsed_args.older_than
        if parsed_args.dry_run:
            count = count_purgeable(url, days)
            self.app.stdout.write(
                f"would remove {count} finished builds older than {days:g} days\n"
            )
            return 0
        removed = purge(url, days, batch_size=parsed_args.batch_size)
        self.app.stdout.write(f"removed {removed} finished builds older than {days:g} days\n")
        return 0
