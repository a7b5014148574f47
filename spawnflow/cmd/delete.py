"""``spawnflow delete INSTANCE``: tear an instance down, showing each step as it happens."""

from __future__ import annotations

import argparse

from spawnflow import Agent
from spawnflow.cmd.base import Command
from spawnflow.cmd.render.build import STEP_COLUMNS, step_rows, summary
from spawnflow.cmd.render.text import emit_table, safe
from spawnflow.engine.admin import queue_delete
from spawnflow.history import History, lifecycle


class Delete(Command):
    """Delete an instance: power off, unplug, unfilter, disconnect, remove files, undefine."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("instance", metavar="INSTANCE", help="the instance's uuid")
        parser.add_argument(
            "--force",
            action="store_true",
            help="destroy the guest at once instead of asking it to shut down first "
            "([DEFAULT] shutdown_timeout)",
        )
        parser.add_argument(
            "--timeout", type=float, default=None, help="seconds to wait for the outcome"
        )
        parser.add_argument(
            "--no-wait",
            action="store_true",
            help="only queue the delete in the database for the agent of the instance's "
            "host (`spawnflow agent`) and print its id",
        )
        return parser

    def _progress(self, build_id: str, step: str, state: str, elapsed: float) -> None:
        self.app.stdout.write(f"{elapsed:8.3f}s  {step:<18} {state}\n")
        self.app.stdout.flush()

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        if parsed_args.no_wait:
            queued = queue_delete(self.conf, parsed_args.instance, force=parsed_args.force)
            doing = "queued for" if queued.created else f"already {queued.state}, on"
            self.app.stdout.write(
                f"delete {queued.build_id} of instance {queued.instance_uuid} {doing} "
                f"the agent of host {safe(queued.host)}\n"
            )
            return 0
        with Agent(self.conf, progress=self._progress) as agent:
            outcome = agent.delete_instance(
                parsed_args.instance, timeout=parsed_args.timeout, force=parsed_args.force
            )
        self.app.stdout.write(f"delete {outcome.build_id}\n")
        with History.open(self.db_url(parsed_args)) as history:
            build = history.build(outcome.build_id)
        self.app.stdout.write("\n" + summary(build) + "\n")
        emit_table(STEP_COLUMNS, step_rows(build), self.app.stdout)
        return 0 if outcome.state == lifecycle.DELETED else 1
