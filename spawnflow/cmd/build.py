"""``spawnflow build cancel BUILD``: ask the owning agent to roll a build back."""

from __future__ import annotations

from cliff.command import Command

from spawnflow import conf as sf_conf
from spawnflow.cmd.formatting import safe
from spawnflow.engine.events import request_cancel
from spawnflow.exceptions import SpawnflowError
from spawnflow.persistence import lifecycle
from spawnflow.persistence.eventlog import EventLog


class BuildCancel(Command):
    """Cancel a build: it rolls back from its next step boundary (persisted first)."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("build_id", metavar="BUILD_ID")
        return parser

    def take_action(self, parsed_args):
        log = EventLog.open(sf_conf.database_url(self.app.conf), upgrade=False)
        try:
            row = log.get_build(parsed_args.build_id)
            if lifecycle.is_final(row.state):
                raise SpawnflowError(f"build {row.build_id} is already {row.state}")
            request_cancel(log, row.build_id)
        finally:
            log.close()
        self.app.stdout.write(
            f"cancel of build {row.build_id} requested; the agent of host "
            f"{safe(row.host)} rolls it back at the next step boundary\n"
        )
