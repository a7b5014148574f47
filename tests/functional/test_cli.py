"""The spawnflow command: spawn shows each step and ends with the history table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.helpers import make_spec, write_conf


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "spawnflow.cmd.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_spawn_then_history(tmp_path: Path, image: Path):
    conf = write_conf(
        tmp_path / "cli.conf",
        DEFAULT={"state_path": tmp_path / "state"},
        libvirt={"connection_uri": "test:///default", "virt_type": "test"},
        firewall={"driver": "noop"},
        images={"allowed_sources": tmp_path},
    )
    spec = make_spec(image)
    spec_path = tmp_path / "vm.yaml"
    spec_path.write_text(yaml.safe_dump(spec))

    spawned = run_cli("--config-file", str(conf), "spawn", str(spec_path))
    assert spawned.returncode == 0, spawned.stderr
    out = spawned.stdout
    assert "wait_for_boot  SUCCESS" in out
    assert "state     ACTIVE  (QUEUED -> RUNNING -> ACTIVE)" in out
    assert "| domain_create | SUCCESS |" in out
    assert max(len(line) for line in out.splitlines()) <= 80

    listed = run_cli("--config-file", str(conf), "history", "list", "-f", "json")
    assert listed.returncode == 0, listed.stderr
    builds = json.loads(listed.stdout)
    assert [b["State"] for b in builds] == ["ACTIVE"]

    shown = run_cli("--config-file", str(conf), "history", "show", builds[0]["Build"], "-f", "json")
    steps = json.loads(shown.stdout)
    assert steps[0]["Step"] == "disk_info" and len(steps) == 10


def test_bad_spec_exits_nonzero_naming_the_field(tmp_path: Path, image: Path):
    conf = write_conf(
        tmp_path / "cli.conf",
        DEFAULT={"state_path": tmp_path / "state"},
        libvirt={"connection_uri": "test:///default", "virt_type": "test"},
    )
    spec = make_spec(image)
    spec["flavor"]["memory_mb"] = "lots"
    spec_path = tmp_path / "vm.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    result = run_cli("--config-file", str(conf), "spawn", str(spec_path))
    assert result.returncode != 0
    assert "flavor.memory_mb" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_build_is_a_clear_error(tmp_path: Path, image: Path):
    conf = write_conf(tmp_path / "cli.conf", DEFAULT={"state_path": tmp_path / "state"})
    result = run_cli("--config-file", str(conf), "history", "show", "nope")
    assert result.returncode != 0
    assert "no spawnflow history" in result.stderr or "no build nope" in result.stderr
    assert "Traceback" not in result.stderr


def test_db_upgrade_and_current(tmp_path: Path):
    from spawnflow.persistence import db as schema

    conf = write_conf(tmp_path / "db.conf", DEFAULT={"state_path": tmp_path / "state"})
    before = run_cli("--config-file", str(conf), "db", "current")
    assert before.returncode == 0 and "current empty" in before.stdout
    upgraded = run_cli("--config-file", str(conf), "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"revision {schema.head_revision()}" in upgraded.stdout
    after = run_cli("--config-file", str(conf), "db", "current")
    assert f"current {schema.head_revision()}" in after.stdout


def test_db_upgrade_refuses_a_foreign_database(tmp_path: Path):
    import sqlite3

    foreign = tmp_path / "other.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("create table invoices (id integer primary key)")
    before = foreign.read_bytes()
    conf = write_conf(tmp_path / "db.conf", database={"connection": f"sqlite:///{foreign}"})
    result = run_cli("--config-file", str(conf), "db", "upgrade")
    assert result.returncode != 0
    assert "not a spawnflow database" in result.stderr and "Traceback" not in result.stderr
    assert foreign.read_bytes() == before
