"""``spawnflow db upgrade|current``: schema revisions of the event log.

Both name the database they worked on, its URL masked (no password, query or
fragment is ever printed).
"""

from __future__ import annotations

import argparse

from spawnflow.cmd.base import Command
from spawnflow.engine.admin import database_revision, upgrade_database


class DbUpgrade(Command):
    """Upgrade the event log schema to the newest revision."""

    def take_action(self, parsed_args: argparse.Namespace) -> None:
        schema = upgrade_database(self.db_url(parsed_args))
        self.app.stdout.write(f"database {schema.database} at revision {schema.head}\n")


class DbCurrent(Command):
    """Show the event log schema revision (and the newest this code knows)."""

    def take_action(self, parsed_args: argparse.Namespace) -> None:
        schema = database_revision(self.db_url(parsed_args))
        self.app.stdout.write(
            f"current {schema.current or 'empty'} (head {schema.head}) in {schema.database}\n"
        )
