"""``spawnflow db upgrade|current``: schema revisions of the event log.

Both name the database they worked on, its URL masked (no password, query or
fragment is ever printed).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import sqlalchemy as sa
from cliff.command import Command

from spawnflow import conf as sf_conf
from spawnflow.exceptions import PersistenceError
from spawnflow.persistence import schema
from spawnflow.persistence.redact import mask_url


@contextlib.contextmanager
def _named(url: str) -> Iterator[None]:
    """A malformed URL is refused showing it masked (SQLAlchemy's own error does not
    say which URL, and must not print it whole)."""
    try:
        yield
    except sa.exc.ArgumentError as exc:
        raise PersistenceError(f"not a database URL: {mask_url(url)} ({exc})") from None


class DbUpgrade(Command):
    """Upgrade the event log schema to the newest revision."""

    def take_action(self, parsed_args):
        url = sf_conf.database_url(self.app.conf)
        with _named(url):
            schema.open_engine(url).dispose()
        self.app.stdout.write(f"database {mask_url(url)} at revision {schema.head_revision()}\n")


class DbCurrent(Command):
    """Show the event log schema revision (and the newest this code knows)."""

    def take_action(self, parsed_args):
        url = sf_conf.database_url(self.app.conf)
        with _named(url):
            revision = schema.inspect_url(url)
        self.app.stdout.write(
            f"current {revision or 'empty'} (head {schema.head_revision()}) in {mask_url(url)}\n"
        )
