"""``spawnflow event deliver INSTANCE NAME TAG``: hand in an external event from a shell.

The event is persisted in the log for the instance's unfinished build; the
agent running that build reads it from the log (within a second), so this
works from any process, like Neutron's notification would through the library.
"""

from __future__ import annotations

import argparse

from spawnflow.cmd.base import Command
from spawnflow.cmd.options import add_db_option
from spawnflow.engine.admin import EVENT_STATUSES, deliver_event


class EventDeliver(Command):
    """Deliver an external event (network-vif-plugged) to the instance's unfinished build."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        add_db_option(parser)
        parser.add_argument("instance", metavar="INSTANCE", help="instance uuid")
        parser.add_argument("name", metavar="NAME", help="event name: network-vif-plugged")
        parser.add_argument("tag", metavar="TAG", help="event tag: the port (VIF) id")
        parser.add_argument("--status", choices=sorted(EVENT_STATUSES), default="completed")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        # The database is not upgraded: a mistyped --db is refused, not made.
        build_id = deliver_event(
            self.db_url(parsed_args),
            parsed_args.instance,
            parsed_args.name,
            parsed_args.tag,
            parsed_args.status,
        )
        self.app.stdout.write(
            f"delivered {parsed_args.name} ({parsed_args.status}) for "
            f"{parsed_args.tag} to build {build_id}\n"
        )
        return 0
