"""Which database errors mean "the log is unavailable now", as opposed to "this write is wrong".

A write that fails because the log is briefly out of reach (SQLite's write
lock held past the busy timeout, a full disk, a PostgreSQL server restarting,
a dropped connection) says nothing about the build: the build is held and the
write retried once the log answers. A write the database refuses on its
merits (an integrity error, a malformed statement, a corrupt file) is not
retried: it would fail the same way.
"""

from __future__ import annotations

import sqlite3

import sqlalchemy as sa

# SQLite reports these as OperationalError too, but they do not go away on retry.
_SQLITE_PERMANENT = (
    "no such table",
    "no such column",
    "has no column named",
    "syntax error",
    "malformed",
    "readonly database",  # the file's mode or mount: fixed by an operator, not by waiting
    "not authorized",
)


def unavailable(exc: BaseException) -> bool:
    """True when ``exc`` says the database could not be reached or written *now*."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sa.exc.TimeoutError | sa.exc.DisconnectionError):
        return True  # the pool had no connection for us, or the server dropped it
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    if isinstance(orig, sqlite3.OperationalError):
        text = str(orig).lower()
        return not any(word in text for word in _SQLITE_PERMANENT)
    if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
        return True  # psycopg: server closed, connection refused, admin shutdown
    # psycopg raised outside SQLAlchemy (the raw batch path wraps it, but be sure).
    module = type(orig).__module__
    return module.startswith("psycopg") and type(orig).__name__ in (
        "OperationalError",
        "InterfaceError",
    )
