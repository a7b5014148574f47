"""``spawnflow build cancel|rollback|retry|resolve BUILD``: an operator's verbs on a build.

``cancel`` and ``rollback`` ask the owning agent to roll a build back;
``retry`` asks it to try a FAILED build's rollback again; ``resolve`` marks a
FAILED build dealt with by hand. Each (but the bare cancel) is recorded with
``--note`` and who asked (``engine.operator``).
"""

from __future__ import annotations

import argparse

from spawnflow.cmd.base import Command
from spawnflow.cmd.render.text import safe
from spawnflow.engine.admin import cancel_build, resolve_build, retry_build, rollback_build


class _NotedVerb(Command):
    """A verb on one build that records the operator's ``--note``."""

    note_required = False

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("build_id", metavar="BUILD_ID")
        parser.add_argument(
            "--note",
            metavar="TEXT",
            required=self.note_required,
            help="why (kept in the build's history with who asked)"
            + ("" if self.note_required else "; optional"),
        )
        return parser


class BuildCancel(Command):
    """Cancel a build: it rolls back from its next step boundary (persisted first)."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("build_id", metavar="BUILD_ID")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> None:
        request = cancel_build(self.db_url(parsed_args), parsed_args.build_id)
        self.app.stdout.write(
            f"cancel of build {request.build_id} requested; the agent of host "
            f"{safe(request.host)} rolls it back at the next step boundary\n"
        )


class BuildRollback(_NotedVerb):
    """Roll a RUNNING, QUEUED or INTERRUPTED (held) build back now; a final one is refused."""

    def take_action(self, parsed_args: argparse.Namespace) -> None:
        request = rollback_build(self.db_url(parsed_args), parsed_args.build_id, parsed_args.note)
        self.app.stdout.write(
            f"rollback of build {request.build_id} ({request.state}) requested; the agent "
            f"of host {safe(request.host)} rolls it back\n"
        )


class BuildRetry(_NotedVerb):
    """Retry a FAILED build's rollback from where it failed (fix the cause first)."""

    def take_action(self, parsed_args: argparse.Namespace) -> None:
        request = retry_build(self.db_url(parsed_args), parsed_args.build_id, parsed_args.note)
        self.app.stdout.write(
            f"retry of build {request.build_id}'s rollback requested; the agent of host "
            f"{safe(request.host)} reverts what is left\n"
        )


class BuildResolve(_NotedVerb):
    """Declare a FAILED build dealt with by hand: it becomes RESOLVED (history kept)."""

    note_required = True

    def take_action(self, parsed_args: argparse.Namespace) -> None:
        request = resolve_build(self.db_url(parsed_args), parsed_args.build_id, parsed_args.note)
        self.app.stdout.write(f"build {request.build_id} is {request.state}\n")
