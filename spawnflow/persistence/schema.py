"""Database engines and schema revisions (alembic), with the refusal rules.

A database is accepted when it is empty (it gets upgraded), or carries our
alembic version table at a revision this code knows. Anything else — a foreign
database, or one written by a newer spawnflow — is refused untouched.
"""

from __future__ import annotations

import logging
import os

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from spawnflow.exceptions import SchemaError

VERSION_TABLE = "spawnflow_alembic_version"
# alembic narrates every migration at INFO; operators only need to hear of problems.
logging.getLogger("alembic").setLevel(logging.WARNING)
_MIGRATIONS = os.path.join(os.path.dirname(__file__), "migrations")


def make_engine(url: str) -> sa.Engine:
    """An engine with the durability settings of the event log.

    SQLite: WAL and synchronous=FULL (a commit survives power loss), a busy
    timeout for other processes, and BEGIN IMMEDIATE for write transactions
    (execution option ``write=True``, see ``EventLog.transaction``) so that two
    writers never deadlock upgrading a read lock; reads stay deferred snapshots
    that never wait for a writer.
    """
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True, future=True)
    path = sa.engine.make_url(url).database
    if path and path != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record):  # noqa: ANN001 - DBAPI callback
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn):  # noqa: ANN001 - SQLAlchemy callback
        write = conn.get_execution_options().get("write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _alembic_config(connection: sa.Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", _MIGRATIONS)
    config.attributes["connection"] = connection
    config.attributes["version_table"] = VERSION_TABLE
    return config


def head_revision() -> str:
    return ScriptDirectory(_MIGRATIONS).get_current_head()


def current_revision(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE}).get_current_revision()


def check(engine: sa.Engine) -> str | None:
    """Return the database revision (None when empty); raise SchemaError if unusable."""
    names = set(sa.inspect(engine).get_table_names())
    if not names:
        return None
    if VERSION_TABLE not in names:
        raise SchemaError(
            f"{engine.url.render_as_string(hide_password=True)} is not a spawnflow database "
            f"(tables {', '.join(sorted(names)[:5])}...); refusing to touch it")
    revision = current_revision(engine)
    known = {s.revision for s in ScriptDirectory(_MIGRATIONS).walk_revisions()}
    if revision not in known:
        raise SchemaError(
            f"database revision {revision!r} is newer than this spawnflow (head "
            f"{head_revision()!r}); upgrade spawnflow, the database was left untouched")
    return revision


def inspect_url(url: str) -> str | None:
    """``check`` through a plain connection, before any pragma can touch the file.

    (Switching a SQLite file to WAL rewrites its header, so a foreign database
    must be refused before the durable engine ever connects.)
    """
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:" and not os.path.exists(path):
            return None
    probe = sa.create_engine(url)
    try:
        return check(probe)
    finally:
        probe.dispose()


def open_engine(url: str, upgrade_schema: bool = True) -> sa.Engine:
    """The durable engine for ``url``, refused if foreign/newer, upgraded if asked."""
    revision = inspect_url(url)
    engine = make_engine(url)
    if upgrade_schema and revision != head_revision():
        try:
            upgrade(engine)
        except Exception:
            engine.dispose()
            raise
    return engine


def upgrade(engine: sa.Engine) -> str:
    """Bring the schema to head through the migrations (never create_all)."""
    check(engine)
    # A write transaction from the start: two agents upgrading at once queue up,
    # and the second finds the schema at head (alembic re-reads the revision).
    with engine.connect() as conn, conn.execution_options(write=True).begin():
        command.upgrade(_alembic_config(conn), "head")
    return head_revision()
