"""``spawnflow history show BUILD_ID``: one build's outcome and recovery, then its steps."""

from __future__ import annotations

import argparse
from typing import Any

from spawnflow.cmd.base import HistoryLister, is_table
from spawnflow.cmd.render.build import (
    STEP_COLUMNS,
    STEP_FULL_COLUMNS,
    step_full_rows,
    step_rows,
    summary,
)
from spawnflow.cmd.render.text import safe, table_width, wrap


class HistoryShow(HistoryLister):
    """Show one build: its outcome and recovery, then one row per step.

    BUILD_ID may be a unique prefix. Columns (table): Took is the forward run,
    Revert the rollback of the step, Try the forward attempts. Times are UTC.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("build_id", metavar="BUILD_ID", help="build id or unique prefix")
        parser.add_argument(
            "--diagnose",
            action="store_true",
            help="say in words what the build waits for or why it failed "
            "(to stderr with -f json|yaml|csv|value)",
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], Any]:
        with self.open_history(parsed_args) as history:
            build = history.build(parsed_args.build_id)
        width = table_width()
        text = self.diagnosis(build) if parsed_args.diagnose else None
        if is_table(parsed_args):
            self.app.stdout.write(summary(build, width, brief=bool(text)) + "\n")
            if text:
                self.app.stdout.write("\n".join(wrap("diagnosis", text, width)) + "\n")
            return STEP_COLUMNS, step_rows(build, width)
        if text:
            self.app.stderr.write(safe(text) + "\n")
        return STEP_FULL_COLUMNS, step_full_rows(build)
