"""Export a build's history as JSON, import it elsewhere: same history, refusals are clear."""

from __future__ import annotations

import copy
import json
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from spawnflow.exceptions import PersistenceError, SchemaError
from spawnflow.history import DuplicateBuild, History, InvalidExport, import_document
from spawnflow.persistence import export, replay, schema
from spawnflow.persistence.eventlog import EventLog
from tests.unit.conftest import new_build, run_build


@pytest.fixture
def source(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/source.sqlite"


@pytest.fixture
def target(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/target.sqlite"


def make_builds(url: str) -> dict[str, str]:
    log = EventLog.open(url)
    try:
        return {"active": run_build(log), "rolled_back": run_build(log, fail_at="image"),
                "failed": run_build(log, fail_at="vifs", revert_fail_at="image"),
                "queued": new_build(log)}
    finally:
        log.close()


def exported(url: str, build_id: str) -> dict:
    with History.open(url) as history:
        doc = history.export(build_id)
    return json.loads(export.dumps(doc))  # through JSON, as a file would carry it


def row_of(url: str, build_id: str) -> dict:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        row = conn.execute(sa.text("select * from builds where build_id = :b"),
                           {"b": build_id}).mappings().one()
    engine.dispose()
    return dict(row)


def test_document_is_self_contained(source):
    ids = make_builds(source)
    doc = exported(source, ids["rolled_back"])
    assert (doc["format"], doc["version"]) == ("spawnflow-build-history", 1)
    assert doc["schema_revision"] == schema.head_revision()
    assert doc["build"]["build_id"] == ids["rolled_back"]
    assert doc["build"]["state"] == "ROLLED_BACK"
    assert doc["events"][0]["kind"] == "build" and doc["events"][0]["to_state"] == "QUEUED"
    seqs = [e["seq"] for e in doc["events"]]
    assert seqs == sorted(seqs)


@pytest.mark.parametrize("which", ["active", "rolled_back", "failed"])
def test_import_replays_the_same_history_and_builds_row(source, target, which):
    ids = make_builds(source)
    build_id = ids[which]
    # The target already has other builds: sequence numbers are new there.
    make_builds(target)
    assert import_document(target, exported(source, build_id)) == build_id
    with History.open(source) as a, History.open(target) as b:
        before, after = a.build(build_id), b.build(build_id)
        assert [(e.kind, e.name, e.from_state, e.to_state, e.at, e.payload)
                for e in a.events(build_id)] == \
            [(e.kind, e.name, e.from_state, e.to_state, e.at, e.payload)
             for e in b.events(build_id)]
    assert after == before
    old, new = row_of(source, build_id), row_of(target, build_id)
    new.pop("last_seq"), old.pop("last_seq")  # sequence numbers are the target's own
    assert new == old
    # Every projection of the target is what its events say (replay == projection).
    log = EventLog.open(target)
    try:
        assert replay.replay(log) == replay.current(log)
    finally:
        log.close()


def test_import_into_an_empty_database_creates_it(source, target, tmp_path):
    build_id = make_builds(source)["active"]
    path = tmp_path / "target.sqlite"
    assert not path.exists()
    import_document(target, exported(source, build_id))
    with History.open(target) as history:
        assert [b.build_id for b in history.builds()] == [build_id]


def test_duplicate_is_refused_and_nothing_written(source, target):
    build_id = make_builds(source)["active"]
    doc = exported(source, build_id)
    import_document(target, doc)
    with pytest.raises(DuplicateBuild, match=f"build {build_id} is already in the target"):
        import_document(target, doc)
    with pytest.raises(DuplicateBuild):
        import_document(source, doc)
    with History.open(target) as history:
        assert len(history.events(build_id)) == len(doc["events"])


def test_unfinished_build_needs_allow_unfinished(source, target):
    build_id = make_builds(source)["queued"]
    doc = exported(source, build_id)
    with pytest.raises(PersistenceError, match="QUEUED, not finished"):
        import_document(target, doc)
    import_document(target, doc, allow_unfinished=True)
    with History.open(target) as history:
        assert history.build(build_id).state == "QUEUED"


def test_bad_documents_are_refused(source, target):
    build_id = make_builds(source)["rolled_back"]
    doc = exported(source, build_id)
    with pytest.raises(InvalidExport, match="not JSON"):
        export.loads(b"{nope", "x.json")
    with pytest.raises(InvalidExport, match="not a spawnflow build history export"):
        export.loads(json.dumps({"hello": 1}), "x.json")
    newer = dict(doc, version=99)
    with pytest.raises(InvalidExport, match="export version 99, newer"):
        import_document(target, newer)
    headless = copy.deepcopy(doc)
    del headless["events"][0]
    with pytest.raises(InvalidExport, match="first event is not the build's creation"):
        import_document(target, headless)
    edited = copy.deepcopy(doc)
    edited["build"]["state"] = "ACTIVE"
    with pytest.raises(InvalidExport, match="says state='ACTIVE' but its events say"):
        import_document(target, edited)
    illegal = copy.deepcopy(doc)
    illegal["events"] = [e for e in illegal["events"]
                         if not (e["kind"] == "build" and e["to_state"] == "REVERTING")]
    with pytest.raises(PersistenceError, match="RUNNING -> ROLLED_BACK is not allowed"):
        import_document(target, illegal)
    log = EventLog.open(target)
    try:
        assert replay.current(log)["builds"] == {}  # all or nothing
    finally:
        log.close()


def test_foreign_or_newer_target_is_refused(source, tmp_path):
    doc = exported(source, make_builds(source)["active"])
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("create table invoices (id integer primary key)")
    with pytest.raises(SchemaError, match="not a spawnflow database"):
        import_document(f"sqlite:///{foreign}", doc)
    newer = f"sqlite:///{tmp_path}/newer.sqlite"
    EventLog.open(newer).close()
    with sqlite3.connect(tmp_path / "newer.sqlite") as conn:
        conn.execute(f"update {schema.VERSION_TABLE} set version_num = '9999'")
    with pytest.raises(SchemaError, match="newer than this spawnflow"):
        import_document(newer, doc)
