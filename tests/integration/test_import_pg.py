"""``history import`` into PostgreSQL: only its own build is added; a refusal writes nothing.

PostgreSQL enforces what SQLite does not (column widths, NUL in text), so the
checks that keep those out of the target are proven on the real server.
"""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from spawnflow.history import History, InvalidExport, export, import_document
from spawnflow.persistence.eventlog import EventLog
from tests.integration.test_persistence_backends import drop_pg_database, fresh_pg_database
from tests.unit.conftest import run_build

pytestmark = pytest.mark.integration

TABLES = ("builds", "events", "logbooks", "flowdetails", "atomdetails")


@pytest.fixture
def pg(postgres_url):
    url = fresh_pg_database(postgres_url)
    yield url
    drop_pg_database(url)


def rows(url: str) -> dict[str, set[str]]:
    """Every row of every table (as text, so JSON columns compare too)."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        found = {
            table: {str(tuple(r)) for r in conn.execute(sa.text(f"select * from {table}"))}
            for table in TABLES
        }
    engine.dispose()
    return found


def test_import_into_postgresql_adds_only_its_build(pg, tmp_path):
    source = f"sqlite:///{tmp_path}/source.sqlite"
    log = EventLog.open(source)
    try:
        build_id = run_build(log, fail_at="image")
    finally:
        log.close()
    with History.open(source) as history:
        doc = json.loads(export.dumps(history.export(build_id)))
    log = EventLog.open(pg)
    try:
        victim = run_build(log)
    finally:
        log.close()
    engine = sa.create_engine(pg)
    with engine.connect() as conn:
        victim_atom = conn.execute(
            sa.text("select uuid from atomdetails where book_uuid = :b limit 1"), {"b": victim}
        ).scalar_one()
    engine.dispose()
    own_atom = next(e["subject"] for e in doc["events"] if e["kind"] == "atom")
    before = rows(pg)
    forged = json.loads(json.dumps(doc).replace(own_atom, victim_atom))
    with pytest.raises(InvalidExport, match="collide with rows of another build"):
        import_document(pg, forged)
    long_name = json.loads(json.dumps(doc))
    next(e for e in long_name["events"] if e["kind"] == "atom")["name"] = "x" * 256
    with pytest.raises(InvalidExport, match=r"name: longer than 255 characters"):
        import_document(pg, long_name)
    nul = json.loads(json.dumps(doc).replace('"cmp-1"', '"cmp-1\\u0000"'))
    with pytest.raises(InvalidExport, match="contains a NUL character"):
        import_document(pg, nul)
    assert rows(pg) == before

    name = json.dumps("web\x1b]0;pwned\x07\u202e")[1:-1]  # as JSON text writes it
    hostile = json.loads(json.dumps(doc).replace(doc["build"]["instance_name"], name))
    assert import_document(pg, hostile) == build_id
    after = rows(pg)
    assert all(before[table] <= after[table] for table in TABLES)
    with History.open(pg) as history:
        assert history.build(build_id).instance_name == "web\x1b]0;pwned\x07\u202e"
        assert history.build(victim).state == "ACTIVE"
