"""Delete builds in the log: migration 0009, the index per kind, replay and import."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from spawnflow.engine.queue import queue_build, queue_delete
from spawnflow.exceptions import DeleteRefused, SchemaError, SpawnflowError
from spawnflow.flows import teardown
from spawnflow.flows.spec import parse_spec
from spawnflow.history import History, import_document
from spawnflow.history.import_values import InvalidExport
from spawnflow.persistence import db, lifecycle
from spawnflow.persistence import tables as t
from spawnflow.persistence.backend import EventLogBackend
from spawnflow.persistence.eventlog import EventLog
from spawnflow.persistence.replay import replay_events
from tests.helpers import make_spec, new_uuid
from tests.unit.test_one_build_per_instance import at_revision


@pytest.fixture
def log(tmp_path: Path):
    with EventLog.open(f"sqlite:///{tmp_path}/log.sqlite") as eventlog:
        yield eventlog


@pytest.fixture
def backend(log):
    found = EventLogBackend(eventlog=log)
    yield found
    found.close()


def spawned(log, backend, tmp_path: Path, state: str = lifecycle.ACTIVE) -> tuple[str, str]:
    spec = parse_spec(make_spec(tmp_path / "image.qcow2"))
    build_id, _ = queue_build(log, backend, spec, "cmp1")
    path = {
        lifecycle.ACTIVE: ["RUNNING", "ACTIVE"],
        lifecycle.RUNNING: ["RUNNING"],
        lifecycle.ROLLED_BACK: ["RUNNING", "REVERTING", "ROLLED_BACK"],
    }[state]
    for step in path:
        log.transition_build(build_id, step)
    return build_id, spec.instance.uuid


def test_a_delete_may_wait_beside_an_unfinished_spawn_but_never_beside_another_delete(
    log, backend, tmp_path
):
    build_id, instance = spawned(log, backend, tmp_path, lifecycle.RUNNING)
    row, created = queue_delete(log, backend, instance)
    assert created and row.kind == "delete" and row.host == "cmp1"
    assert row.spec == {
        "instance": {"uuid": instance, "name": row.instance_name},
        "builds": [build_id],
        "force": False,
    }
    assert row.flow_version == teardown.flow_version()
    # The index refuses a second unfinished delete, whoever inserts it.
    with pytest.raises(sa.exc.IntegrityError):
        log.create_build(
            "d2", instance_uuid=instance, instance_name="x", host="cmp1", spec={}, kind="delete"
        )
    assert queue_delete(log, backend, instance) == (row, False)
    # No spawn may be queued while the instance is being deleted.
    with pytest.raises(SpawnflowError, match="is being deleted"):
        queue_build(
            log,
            backend,
            parse_spec(make_spec(tmp_path / "i", instance={"uuid": instance, "name": "vm"})),
            "cmp1",
        )


def test_a_delete_is_refused_for_no_build_another_host_or_a_bad_uuid(log, backend, tmp_path):
    _, instance = spawned(log, backend, tmp_path)
    with pytest.raises(DeleteRefused, match="has no build"):
        queue_delete(log, backend, new_uuid())
    with pytest.raises(DeleteRefused, match="lives on host cmp1, not cmp2"):
        queue_delete(log, backend, instance, host="cmp2")
    with pytest.raises(DeleteRefused, match="not a UUID"):
        queue_delete(log, backend, "../../etc")
    assert [r.kind for r in log.builds()] == ["spawn"]


def test_replay_and_import_keep_the_kind_and_its_table(log, backend, tmp_path):
    build_id, instance = spawned(log, backend, tmp_path)
    row, _ = queue_delete(log, backend, instance)
    for state in ("DELETING", "DELETED"):
        log.transition_build(row.build_id, state)
    log.transition_build(build_id, "DELETED", payload={"deleted_by": row.build_id})
    replayed = replay_events(log.events(row.build_id))["builds"][row.build_id]
    assert replayed["kind"] == "delete" and replayed["state"] == "DELETED"
    assert replay_events(log.events(build_id))["builds"][build_id]["state"] == "DELETED"

    url = str(log.engine.url)
    with History.open(url) as history:
        document = history.export(row.build_id)
    other = f"sqlite:///{tmp_path}/other.sqlite"
    assert import_document(other, document) == row.build_id
    with EventLog.open(other) as imported:
        assert imported.get_build(row.build_id).kind == "delete"
    # A delete's history cannot pass for a spawn's (its table differs) ...
    forged = dict(document, events=[dict(e) for e in document["events"]])
    first = forged["events"][0]
    first["payload"] = {k: v for k, v in first["payload"].items() if k != "kind"}
    with pytest.raises(InvalidExport, match="QUEUED -> DELETING"):
        import_document(f"sqlite:///{tmp_path}/third.sqlite", forged)
    # ... nor carry a kind of build nobody knows.
    first["payload"] = dict(first["payload"], kind="resize")
    with pytest.raises(InvalidExport, match="no kind of build 'resize'"):
        import_document(f"sqlite:///{tmp_path}/fourth.sqlite", forged)


def test_0009_upgrades_old_rows_to_spawn_and_a_downgrade_keeps_delete_builds(tmp_path):
    path = tmp_path / "old.sqlite"
    url = at_revision(path, "0008")
    with sqlite3.connect(path) as conn:
        conn.execute(
            "insert into builds (build_id, instance_uuid, instance_name, host, state, "
            "created_at, updated_at, spec, last_seq) "
            "values ('b0', 'i0', 'vm', 'h', 'ACTIVE', 1, 1, '{}', 0)"
        )
    conn.close()
    with EventLog.open(url) as log:
        assert db.current_revision(log.engine) == "0009"
        assert log.get_build("b0").kind == "spawn"
        log.create_build(
            "d0", instance_uuid="i0", instance_name="vm", host="h", spec={}, kind="delete"
        )
    from alembic import command

    engine = db.make_engine(url)
    with pytest.raises(SchemaError, match="delete builds"), engine.begin() as conn:
        command.downgrade(db._alembic_config(conn), "0008")
    with engine.connect() as conn:
        assert (
            conn.execute(sa.select(t.builds.c.kind).where(t.builds.c.build_id == "d0")).scalar_one()
            == "delete"
        )
    engine.dispose()
