"""One unfinished build per instance: the partial unique index, its migration, queue_build."""

from __future__ import annotations

import importlib.util
import re
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from spawnflow.engine.agent import queue_build
from spawnflow.exceptions import SchemaError, SpawnflowError
from spawnflow.flows.spec import parse_spec
from spawnflow.persistence import db, lifecycle
from spawnflow.persistence import tables as t
from spawnflow.persistence.backend import EventLogBackend
from spawnflow.persistence.eventlog import EventLog
from tests.helpers import make_spec, new_uuid

VERSIONS = Path(db.__file__).parent / "migrations" / "versions"
MIGRATION = VERSIONS / "0005_one_unfinished_build.py"


def load_migration(path: Path = MIGRATION):
    spec = importlib.util.spec_from_file_location(f"migration_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def newest_index_migration():
    """The newest migration that (re)makes the index: its WHERE is what the code says now."""
    found = [load_migration(p) for p in sorted(VERSIONS.glob("0*.py"))]
    return [m for m in found if getattr(m, "INDEX", None) and getattr(m, "WHERE", None)][-1]


def quoted_states(clause: str) -> set[str]:
    match = re.fullmatch(r"state NOT IN \(((?:'[A-Z_]+'(?:, )?)+)\)", clause)
    assert match, clause
    return set(re.findall(r"'([A-Z_]+)'", match.group(1)))


def test_migration_clause_is_the_lifecycle_non_final_set():
    migration = newest_index_migration()
    assert t.unfinished_clause() == migration.WHERE
    excluded = quoted_states(migration.WHERE)
    assert excluded == lifecycle.FINAL
    assert lifecycle.STATES - excluded == lifecycle.STATES - lifecycle.FINAL
    index = next(i for i in t.builds.indexes if i.name == migration.INDEX)
    assert index.unique and [c.name for c in index.columns] == ["instance_uuid", "kind"]
    for dialect in ("sqlite", "postgresql"):
        assert str(index.dialect_options[dialect]["where"]) == migration.WHERE


@pytest.fixture
def log(tmp_path: Path):
    eventlog = EventLog.open(f"sqlite:///{tmp_path}/one.sqlite")
    yield eventlog
    eventlog.close()


def insert_build(conn: sa.Connection, instance: str, state: str) -> None:
    conn.execute(
        sa.insert(t.builds).values(
            build_id=new_uuid(),
            instance_uuid=instance,
            instance_name="vm",
            host="h",
            state=state,
            created_at=1.0,
            updated_at=1.0,
            spec={},
            error=None,
            last_seq=0,
        )
    )


@pytest.mark.parametrize("state", sorted(lifecycle.STATES))
def test_the_migrated_index_allows_two_builds_of_an_instance_only_when_final(log, state):
    instance = new_uuid()
    with log.engine.begin() as conn:
        insert_build(conn, instance, state)
        insert_build(conn, instance, lifecycle.ACTIVE)  # a final one never counts
    if lifecycle.is_final(state):
        with log.engine.begin() as conn:
            insert_build(conn, instance, state)
    else:
        with pytest.raises(sa.exc.IntegrityError), log.engine.begin() as conn:
            insert_build(conn, instance, lifecycle.QUEUED)
    unfinished = log.builds(instance_uuid=instance, states=lifecycle.STATES - lifecycle.FINAL)
    assert len(unfinished) == (0 if lifecycle.is_final(state) else 1)


def test_a_second_unfinished_build_is_refused_with_nothing_written(log):
    instance = new_uuid()
    log.create_build("b1", instance_uuid=instance, instance_name="vm", host="h", spec={})
    with log.engine.connect() as conn:
        events = conn.execute(sa.select(sa.func.count()).select_from(t.events)).scalar()
    with pytest.raises(sa.exc.IntegrityError):
        log.create_build("b2", instance_uuid=instance, instance_name="vm", host="h", spec={})
    with log.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t.events)).scalar() == events
    assert [b.build_id for b in log.builds(instance_uuid=instance)] == ["b1"]
    # Once the first is final, the instance may be built again.
    for state in (lifecycle.RUNNING, lifecycle.REVERTING, lifecycle.ROLLED_BACK):
        log.transition_build("b1", state)
    log.create_build("b2", instance_uuid=instance, instance_name="vm", host="h", spec={})


def at_revision(path: Path, revision: str) -> str:
    from alembic import command

    url = f"sqlite:///{path}"
    engine = db.make_engine(url)
    with engine.begin() as conn:
        command.upgrade(db._alembic_config(conn), revision)
    engine.dispose()
    return url


def test_upgrade_refuses_two_unfinished_builds_of_one_instance_and_changes_nothing(tmp_path):
    path = tmp_path / "old.sqlite"
    url = at_revision(path, "0004")
    with sqlite3.connect(path) as conn:
        for build_id, instance, state in [
            ("dup-1", "inst-a", "RUNNING"),
            ("dup-2", "inst-a", "QUEUED"),
            ("done-1", "inst-a", "ROLLED_BACK"),
            ("solo-1", "inst-b", "QUEUED"),
        ]:
            conn.execute(
                "insert into builds values (?, ?, 'vm', 'cmp1', ?, 1, 1, '{}', null, 0)",
                (build_id, instance, state),
            )
    conn.close()
    with pytest.raises(SchemaError) as refused:
        EventLog.open(url)
    message = str(refused.value)
    assert "dup-1" in message and "dup-2" in message and "inst-a" in message
    assert "done-1" not in message and "solo-1" not in message
    assert "left unchanged" in message
    engine = db.make_engine(url)
    assert db.current_revision(engine) == "0004"
    assert "ux_builds_unfinished_instance" not in {
        i["name"] for i in sa.inspect(engine).get_indexes("builds")
    }
    engine.dispose()

    # Once the operator settled them, the same database upgrades.
    with sqlite3.connect(path) as conn:
        conn.execute("update builds set state = 'ROLLED_BACK' where build_id = 'dup-2'")
    conn.close()
    log = EventLog.open(url)
    assert db.current_revision(log.engine) == db.head_revision()
    log.close()


@pytest.fixture
def queue(log, tmp_path):
    backend = EventLogBackend(eventlog=log)
    spec = parse_spec(make_spec(tmp_path / "image.qcow2"))

    def run(host: str = "cmp1") -> tuple[str, bool]:
        return queue_build(log, backend, spec, host)

    run.spec = spec
    yield run
    backend.close()


def test_a_retry_returns_the_unfinished_build(log, queue):
    first, created = queue()
    assert created
    assert queue() == (first, False)
    log.transition_build(first, lifecycle.RUNNING)
    assert queue() == (first, False)
    with pytest.raises(SpawnflowError, match=f"being built on host cmp1 \\(build {first}\\)"):
        queue("cmp2")


def test_a_retry_after_active_returns_the_active_build(log, queue):
    first, _ = queue()
    log.transition_build(first, lifecycle.RUNNING)
    log.transition_build(first, lifecycle.ACTIVE)
    assert queue() == (first, False)
    assert len(log.builds(instance_uuid=queue.spec.instance.uuid)) == 1
    with pytest.raises(SpawnflowError, match="is ACTIVE on host cmp1"):
        queue("cmp2")


@pytest.mark.parametrize("path", [[lifecycle.ROLLED_BACK], [lifecycle.FAILED]])
def test_a_retry_after_rolled_back_or_failed_starts_a_new_build(log, queue, path):
    first, _ = queue()
    for state in [lifecycle.RUNNING, lifecycle.REVERTING, *path]:
        log.transition_build(first, state)
    second, created = queue()
    assert created and second != first
    assert log.get_build(second).state == lifecycle.QUEUED
