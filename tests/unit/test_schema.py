"""Schema revisions: migrations create the log; foreign or newer databases are refused."""

import sqlite3

import pytest
import sqlalchemy as sa

from spawnflow.exceptions import SchemaError
from spawnflow.persistence import db, tables
from spawnflow.persistence.eventlog import EventLog


def test_empty_database_is_upgraded_by_migrations(tmp_path):
    url = f"sqlite:///{tmp_path}/new.sqlite"
    EventLog.open(url).close()
    engine = db.make_engine(url)
    assert db.current_revision(engine) == db.head_revision()
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
    engine = db.make_engine(url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": db.VERSION_TABLE})
        diff = [
            d
            for d in compare_metadata(context, tables.metadata)
            if not (d[0] == "remove_table" and d[1].name == db.VERSION_TABLE)
        ]
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
        conn.execute(f"update {db.VERSION_TABLE} set version_num = '9999'")
    with pytest.raises(SchemaError, match="newer than this spawnflow"):
        EventLog.open(url)


def test_database_populated_at_the_previous_revision_upgrades(tmp_path):
    from alembic import command

    url = f"sqlite:///{tmp_path}/old.sqlite"
    engine = db.make_engine(url)
    with engine.begin() as conn:
        command.upgrade(db._alembic_config(conn), "0001")
    with engine.begin() as conn:
        conn.execute(
            sa.insert(tables.events).values(
                build_id="b0",
                ts=1.0,
                kind="build",
                subject="b0",
                name="old",
                to_state="QUEUED",
                payload={"spec": {}, "host": "h", "instance_uuid": "i0"},
            )
        )
        conn.execute(
            sa.insert(tables.builds).values(
                build_id="b0",
                instance_uuid="i0",
                instance_name="old",
                host="h",
                state="QUEUED",
                created_at=1.0,
                updated_at=1.0,
                spec={},
                error=None,
                last_seq=1,
            )
        )
    assert db.current_revision(engine) == "0001"
    engine.dispose()

    log = EventLog.open(url)
    assert db.current_revision(log.engine) == db.head_revision() != "0001"
    assert log.get_build("b0").instance_name == "old"
    indexes = {i["name"] for i in sa.inspect(log.engine).get_indexes("builds")}
    assert "ix_builds_created_at" in indexes
    log.transition_build("b0", "RUNNING")  # the old build goes on under the new schema
    log.close()
