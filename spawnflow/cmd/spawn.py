"""``spawnflow spawn SPEC``: build one VM, showing each step as it happens."""

from __future__ import annotations

import argparse

from spawnflow import Agent
from spawnflow.cmd.base import Command
from spawnflow.cmd.render.build import STEP_COLUMNS, step_rows, summary
from spawnflow.cmd.render.text import emit_table
from spawnflow.engine.admin import queue_build
from spawnflow.exceptions import SpawnflowError
from spawnflow.history import History, lifecycle


class Spawn(Command):
    """Spawn a VM from a YAML/JSON build spec and wait for the outcome."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("spec", metavar="SPEC", help="build spec (YAML or JSON file)")
        parser.add_argument(
            "--timeout", type=float, default=None, help="seconds to wait for the outcome"
        )
        parser.add_argument(
            "--no-wait",
            action="store_true",
            help="only queue the build in the database for this host's "
            "agent (`spawnflow agent`) and print its id",
        )
        parser.add_argument(
            "--host",
            default=None,
            help="with --no-wait: queue it for that host's agent instead (a fleet on one "
            "PostgreSQL log); that agent checks the spec against its own allow lists",
        )
        return parser

    def _progress(self, build_id: str, step: str, state: str, elapsed: float) -> None:
        self.app.stdout.write(f"{elapsed:8.3f}s  {step:<14} {state}\n")
        self.app.stdout.flush()

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        if parsed_args.no_wait:
            return self._queue(parsed_args.spec, parsed_args.host)
        if parsed_args.host is not None and parsed_args.host != self.conf.host:
            raise SpawnflowError(
                f"--host needs --no-wait: without it the build runs here, on host {self.conf.host}"
            )
        with Agent(self.conf, progress=self._progress) as agent:
            build_id = agent.start_build(parsed_args.spec)
            # Not "queued": a retry of an ACTIVE instance returns its build,
            # whose state the summary below shows.
            self.app.stdout.write(f"build {build_id}\n")
            outcome = agent.wait(build_id, timeout=parsed_args.timeout)
        with History.open(self.db_url(parsed_args)) as history:
            build = history.build(build_id)
        self.app.stdout.write("\n" + summary(build) + "\n")
        emit_table(STEP_COLUMNS, step_rows(build), self.app.stdout)
        return 0 if outcome.state == lifecycle.ACTIVE else 1

    def _queue(self, spec_path: str, host: str | None) -> int:
        queued = queue_build(self.conf, spec_path, host)
        if queued.already_active:
            self.app.stdout.write(
                f"build {queued.build_id} of instance {queued.instance_uuid} is "
                f"already ACTIVE on host {queued.host}; nothing queued\n"
            )
            return 0
        doing = "queued for" if queued.created else "already queued/running on"
        self.app.stdout.write(f"build {queued.build_id} {doing} the agent of host {queued.host}\n")
        return 0
