"""Schema revisions: migrations create the log; foreign or newer databases are refused."""

import sqlite3

import pytest
import sqlalchemy as sa

from spawnflow.exceptions import SchemaError
from spawnflow.persistence import schema, tables
from spawnflow.persistence.eventlog import EventLog


def test_empty_database_is_upgraded_by_migrations(tmp_path):
    url = f"sqlite:///{tmp_path}/new.sqlite"
    EventLog.open(url).close()
    engine = schema.make_engine(url)
    assert schema.current_revision(engine) == schema.head_revision()
    names = set(sa.inspect(engine).get_table_names())
    assert {t.name for t in tables.metadata.sorted_tables} <= names
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    engine.dispose()


def test_migrated_schema_matches_the_tables_module(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    url = f"sqlite:///{tmp_path}/cmp.sqlite"
    EventLog.open(url).close()
    engine = schema.make_engine(url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": schema.VERSION_TABLE})
        diff = [d for d in compare_metadata(context, tables.metadata)
                if not (d[0] == "remove_table" and d[1].name == schema.VERSION_TABLE)]
    engine.dispose()
    assert diff == []


def test_foreign_database_is_refused_untouched(tmp_path):
    path = tmp_path / "foreign.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("create table invoices (id integer primary key)")
    before = path.read_bytes()
    with pytest.raises(SchemaError, match="not a spawnflow database"):
        EventLog.open(f"sqlite:///{path}")
    assert path.read_bytes() == before


def test_newer_database_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path}/newer.sqlite"
    EventLog.open(url).close()
    with sqlite3.connect(tmp_path / "newer.sqlite") as conn:
        conn.execute(f"update {schema.VERSION_TABLE} set version_num = '9999'")
    with pytest.raises(SchemaError, match="newer than this spawnflow"):
        EventLog.open(url)
