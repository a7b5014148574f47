"""No command prints a database password, whatever is wrong with the database URL."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
from pathlib import Path

from spawnflow.persistence.redact import mask_url
from tests.helpers import write_conf

SECRET = "SECRETPASS"
URLS = {
    "refused connection": f"postgresql+psycopg://u:{SECRET}@127.0.0.1:1/x",
    "port not a number": f"postgres://u:{SECRET}@host:notaport/x",
    "password in the query": f"postgresql+psycopg://u@127.0.0.1:1/x?password={SECRET}",
    "unknown dialect": f"nosuch://u:{SECRET}@127.0.0.1/x",
}


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "spawnflow.cmd.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def commands(url: str, tmp_path: Path) -> list[tuple[str, ...]]:
    export = tmp_path / "doc.json"
    export.write_text("{}")
    conf = write_conf(tmp_path / f"db-{abs(hash(url))}.conf", database={"connection": url})
    return [
        ("history", "list", "--db", url),
        ("history", "show", "--db", url, "b1"),
        ("history", "export", "--db", url, "b1"),
        ("history", "import", "--db", url, str(export)),
        ("history", "purge", "--db", url, "--older-than", "1"),
        ("event", "deliver", "--db", url, "i1", "network-vif-plugged", "p1"),
        ("--config-file", str(conf), "db", "current"),
        ("--config-file", str(conf), "db", "upgrade"),
        ("--config-file", str(conf), "build", "cancel", "b1"),
        ("--config-file", str(conf), "history", "list"),
    ]


def test_a_refused_database_url_is_shown_masked(tmp_path: Path):
    calls = [
        *commands(URLS["refused connection"], tmp_path),
        *commands(URLS["port not a number"], tmp_path),
    ]
    for problem in ("password in the query", "unknown dialect"):
        calls += [
            ("history", "list", "--db", URLS[problem]),
            commands(URLS[problem], tmp_path)[-4],
        ]  # db current from the config
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda args: run(*args), calls))
    for args, result in zip(calls, results, strict=True):
        shown = f"{args}: rc={result.returncode} {result.stdout!r} {result.stderr!r}"
        assert result.returncode != 0, shown
        assert SECRET not in result.stdout + result.stderr, shown
        assert "Traceback" not in result.stderr, shown
        assert len(result.stderr.strip().splitlines()) == 1, shown
        if "--db" in args and "import" not in args:
            # Where it names the database, it is the masked URL.
            assert (
                "u:***@" in result.stderr
                or "?***" in result.stderr
                or "connection failed" in result.stderr
            ), shown


def test_db_commands_name_the_database_masked(tmp_path: Path):
    db = tmp_path / "state" / "spawnflow.sqlite"
    conf = write_conf(tmp_path / "db.conf", database={"connection": f"sqlite:///{db}"})
    upgraded = run("--config-file", str(conf), "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"database sqlite:///{db} at revision" in upgraded.stdout
    current = run("--config-file", str(conf), "db", "current")
    assert f"in sqlite:///{db}" in current.stdout


def test_mask_url_keeps_a_sqlite_path_and_hides_passwords_and_queries():
    kept = "sqlite:////var/lib/spawnflow/x.sqlite"
    assert mask_url(kept) == kept
    assert mask_url("sqlite:////a/b?mode=ro") == "sqlite:////a/b?***"
    assert mask_url(f"postgresql://u:{SECRET}@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert mask_url(f"postgres://u:{SECRET}@h:notaport/x") == "postgres://u:***@h:notaport/x"
