"""Opening a database: engines, SQLite setup, how a URL is shown, schema revisions.

The one place that makes an engine: the durable one the event log writes
through (``open_engine``) and the read-only one the history reads through
(``read_engine``), both with the same SQLite setup; URLs in messages are
always ``mask_url``-ed (no password, query or fragment).

A database is accepted when it is empty (it gets upgraded), or carries our
alembic version table at a revision this code knows. Anything else — a foreign
database, or one written by a newer spawnflow — is refused untouched.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any, cast

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from spawnflow.exceptions import PersistenceError, SchemaError
from spawnflow.persistence.redact import mask_url

LOG = logging.getLogger(__name__)
VERSION_TABLE = "spawnflow_alembic_version"
# alembic narrates every migration at INFO; operators only need to hear of problems.
logging.getLogger("alembic").setLevel(logging.WARNING)
_MIGRATIONS = str(Path(__file__).parent / "migrations")


def parse_url(url: str) -> sa.engine.URL:
    """``url`` parsed by SQLAlchemy; any malformed URL is an ``ArgumentError`` that
    does not repeat the URL (it may carry a password: callers show ``mask_url``).

    (SQLAlchemy raises a bare ValueError for a port that is not a number.)
    """
    try:
        return sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        raise sa.exc.ArgumentError("cannot parse it as a SQLAlchemy URL") from None
    except ValueError:
        raise sa.exc.ArgumentError("its port is not a number") from None


def make_engine(url: str) -> sa.Engine:
    """An engine with the durability settings of the event log.

    SQLite: WAL and synchronous=FULL (a commit survives power loss), a busy
    timeout for other processes, and BEGIN IMMEDIATE for write transactions
    (execution option ``write=True``, see ``EventLog.transaction``) so that two
    writers never deadlock upgrading a read lock; reads stay deferred snapshots
    that never wait for a writer. The file and its ``-wal``/``-shm`` are the
    owner's only (``prepare_sqlite_file``).
    """
    parsed = parse_url(url)
    if not url.startswith("sqlite"):
        return sa.create_engine(parsed, pool_pre_ping=True, future=True)
    path = parsed.database
    if path and path != ":memory:" and not path.startswith("file:"):
        prepare_sqlite_file(path)
    busy = busy_timeout_ms(parsed)
    return _sqlite_engine(
        url, ("journal_mode=WAL", "synchronous=FULL", f"busy_timeout={busy}"), writes=True
    )


def busy_timeout_ms(parsed: sa.engine.URL) -> int:
    """How long a SQLite writer waits for another one's lock: the URL's ``timeout``
    (seconds, as SQLAlchemy's pysqlite takes it), else 30 s. A write still
    locked out after that fails, and its build is held until the log answers."""
    try:
        seconds = float(parsed.query.get("timeout", 30))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise sa.exc.ArgumentError("its timeout is not a number of seconds") from None
    return max(0, int(seconds * 1000))


def _sqlite_engine(url: str, pragmas: tuple[str, ...], *, writes: bool) -> sa.Engine:
    """A SQLite engine that issues its own BEGIN, with ``pragmas`` set on every connection.

    ``writes``: a transaction with execution option ``write=True`` begins
    IMMEDIATE (takes the write lock at once); every other one is deferred (a
    read snapshot in WAL mode, no write lock).
    """
    seconds = busy_timeout_ms(parse_url(url)) / 1000
    engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": seconds})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_conn.cursor()
        for pragma in pragmas:
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        write = writes and conn.get_execution_options().get("write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def prepare_sqlite_file(path: str) -> None:
    """Make the SQLite file at ``path`` readable by its owner only, before SQLite opens it.

    The log holds every build's spec, errors and host layout; other users of
    the host must not read it. A missing file is created empty with mode 0600
    (SQLite takes a zero-length file as a new database), so there is no moment
    when it exists with the umask's mode; SQLite then creates ``-wal`` and
    ``-shm`` with the main file's mode, whatever the umask. A missing directory
    is created 0711: others cannot list it, but QEMU (not root under
    ``qemu:///system``) must still pass through ``state_path`` to the instance
    directories below it. An existing file (and ``-wal``/``-shm``) of ours with
    group or other bits is tightened to 0600, with a warning; a file another
    user owns is left alone (we only write to it).
    """
    directory = Path(path).absolute().parent
    if not directory.is_dir():
        directory.mkdir(mode=0o711, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        pass
    else:
        try:
            os.fchmod(fd, 0o600)  # exactly 0600, whatever the umask took away
        finally:
            os.close(fd)
    for name in (path, f"{path}-wal", f"{path}-shm"):
        try:
            info = Path(name).stat()
        except FileNotFoundError:
            continue
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077 and info.st_uid == os.geteuid():
            Path(name).chmod(mode & 0o700)
            LOG.warning(
                "%s was readable by other users (mode %04o); changed it to %04o",
                name,
                mode,
                mode & 0o700,
            )


def _alembic_config(connection: sa.Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", _MIGRATIONS)
    config.attributes["connection"] = connection
    config.attributes["version_table"] = VERSION_TABLE
    return config


def head_revision() -> str:
    """The newest revision the migrations of this code know."""
    # Never None: the migrations ship with the package (alembic types it optional).
    return cast(str, ScriptDirectory(_MIGRATIONS).get_current_head())


def current_revision(engine: sa.Engine) -> str | None:
    """The revision the database is at (None: no version table, an empty database)."""
    with engine.connect() as conn:
        return MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE}
        ).get_current_revision()


def check(engine: sa.Engine) -> str | None:
    """Return the database revision (None when empty); raise SchemaError if unusable."""
    names = set(sa.inspect(engine).get_table_names())
    if not names:
        return None
    if VERSION_TABLE not in names:
        shown = mask_url(engine.url.render_as_string(hide_password=True))
        raise SchemaError(
            f"{shown} is not a spawnflow database "
            f"(tables {', '.join(sorted(names)[:5])}...); refusing to touch it"
        )
    revision = current_revision(engine)
    known = {s.revision for s in ScriptDirectory(_MIGRATIONS).walk_revisions()}
    if revision not in known:
        raise SchemaError(
            f"database revision {revision!r} is newer than this spawnflow (head "
            f"{head_revision()!r}); upgrade spawnflow, the database was left untouched"
        )
    return revision


def inspect_url(url: str) -> str | None:
    """``check`` through a plain connection, before any pragma can touch the file.

    (Switching a SQLite file to WAL rewrites its header, so a foreign database
    must be refused before the durable engine ever connects.)
    """
    parsed = parse_url(url)
    if url.startswith("sqlite"):
        path = parsed.database
        if path and path != ":memory:" and not Path(path).exists():
            return None
    probe = sa.create_engine(parsed)
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


def read_engine(url: str) -> sa.Engine:
    """An engine for reads on a checked spawnflow database; never creates or upgrades.

    Refuses (SchemaError) a missing or empty database, a foreign one, one newer
    than this code. On SQLite it reads in deferred transactions (snapshots in
    WAL mode) with ``query_only`` set, so it never takes or waits for the
    write lock a running agent uses.
    """
    try:
        revision = inspect_url(url)
    except sa.exc.ArgumentError as exc:
        raise PersistenceError(f"not a database URL: {mask_url(url)} ({exc})") from None
    except sa.exc.SQLAlchemyError as exc:
        raise PersistenceError(f"cannot read {mask_url(url)}: {first_line(exc)}") from None
    if revision is None:
        raise SchemaError(
            f"{mask_url(url)} holds no spawnflow history (missing or empty "
            "database; check --db or [database] connection)"
        )
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True)
    return _sqlite_engine(url, ("busy_timeout=30000", "query_only=ON"), writes=False)


def first_line(exc: BaseException) -> str:
    """The first line of a database error (the driver's, when SQLAlchemy wraps one)."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return text[0] if text else type(orig).__name__
