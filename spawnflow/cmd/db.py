"""``spawnflow db upgrade|current``: schema revisions of the event log."""

from __future__ import annotations

from cliff.command import Command

from spawnflow import conf as sf_conf
from spawnflow.persistence import schema


class DbUpgrade(Command):
    """Upgrade the event log schema to the newest revision."""

    def take_action(self, parsed_args):  # noqa: ANN001
        schema.open_engine(sf_conf.database_url(self.app.conf)).dispose()
        self.app.stdout.write(f"database at revision {schema.head_revision()}\n")


class DbCurrent(Command):
    """Show the event log schema revision (and the newest this code knows)."""

    def take_action(self, parsed_args):  # noqa: ANN001
        revision = schema.inspect_url(sf_conf.database_url(self.app.conf))
        self.app.stdout.write(f"current {revision or 'empty'} (head {schema.head_revision()})\n")
