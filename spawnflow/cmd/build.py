"""``spawnflow build cancel BUILD``: ask the owning agent to roll a build back."""

from __future__ import annotations

import argparse

from spawnflow.cmd.base import Command
from spawnflow.cmd.render.text import safe
from spawnflow.engine.admin import cancel_build


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
