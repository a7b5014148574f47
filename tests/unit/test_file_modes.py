"""File modes: the SQLite log (and -wal/-shm) and exports are their owner's only."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from spawnflow.cmd.main import main
from spawnflow.history import History
from spawnflow.persistence.eventlog import EventLog


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@contextlib.contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def test_a_new_database_and_its_wal_and_shm_are_0600_under_umask_022(tmp_path: Path):
    state = tmp_path / "state"
    db = state / "spawnflow.sqlite"
    with umask(0o022):
        log = EventLog.open(f"sqlite:///{db}")
        try:
            log.create_build("b1", instance_uuid="i1", instance_name="vm", host="h", spec={})
            # While the log is open the WAL and shared-memory files exist.
            files = [db, Path(f"{db}-wal"), Path(f"{db}-shm")]
            assert all(f.exists() for f in files)
            assert {str(f): mode(f) for f in files} == {str(f): 0o600 for f in files}
            # A reader opening it as well makes no wider file.
            with History.open(f"sqlite:///{db}") as history:
                assert history.build("b1").build_id == "b1"
            assert {str(f): mode(f) for f in files} == {str(f): 0o600 for f in files}
        finally:
            log.close()
    assert mode(state) == 0o711  # others may pass through to instances/, not list it
    assert mode(db) == 0o600


def test_an_existing_world_readable_database_is_tightened_on_open(tmp_path: Path):
    db = tmp_path / "old.sqlite"
    with umask(0o022):
        EventLog.open(f"sqlite:///{db}").close()
        os.chmod(db, 0o644)
        # A -wal/-shm left 0644 by an older spawnflow (or by a reader) too.
        raw = sqlite3.connect(db)
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute("create table scratch (x)")
        for name in (f"{db}-wal", f"{db}-shm"):
            os.chmod(name, 0o644)
        EventLog.open(f"sqlite:///{db}").close()
        assert mode(db) == 0o600
        for name in (f"{db}-wal", f"{db}-shm"):
            assert mode(Path(name)) == 0o600
        raw.close()


def test_a_read_never_creates_a_database(tmp_path: Path):
    missing = tmp_path / "nothing" / "here.sqlite"
    with pytest.raises(Exception, match="holds no spawnflow history"):
        History.open(f"sqlite:///{missing}")
    assert not missing.parent.exists()


@pytest.fixture
def exported_db(tmp_path: Path) -> Path:
    db = tmp_path / "log.sqlite"
    log = EventLog.open(f"sqlite:///{db}")
    log.create_build("b1", instance_uuid="i1", instance_name="vm", host="h", spec={})
    log.close()
    return db


def test_history_export_writes_0600_under_umask_022(
    exported_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    out = tmp_path / "b1.json"
    out.write_text("old, world-readable")
    os.chmod(out, 0o644)
    with umask(0o022):
        assert main(["history", "export", "--db", str(exported_db), "b1", "-o", str(out)]) == 0
    assert mode(out) == 0o600
    assert '"build_id": "b1"' in out.read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    capsys.readouterr()


def test_history_export_never_writes_through_a_symlink(
    exported_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = tmp_path / "export.json"
    link.symlink_to(victim)
    assert main(["history", "export", "--db", str(exported_db), "b1", "-o", str(link)]) == 0
    assert victim.read_text() == "precious"
    assert not link.is_symlink() and mode(link) == 0o600
    assert '"build_id": "b1"' in link.read_text()
    capsys.readouterr()
