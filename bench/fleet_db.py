"""What one PostgreSQL server does for a fleet: statements, commits, server time and CPU.

Used by ``bench.fleet``. The server's own accounting: ``pg_stat_statements``
(loaded by tools/start-postgres.sh through ``shared_preload_libraries``;
``CREATE EXTENSION`` in the bench's database, as the superuser) counts every
statement of every session on that database and its execution time, COMMIT
included (with ``track_utility``, the default), which is when a commit waits
for its WAL flush. Beside it, the CPU time of the server's processes
(``/proc``), which also counts what no statement's time holds (parsing,
the protocol, the WAL writer, autovacuum).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

TICKS = os.sysconf("SC_CLK_TCK")
CONTROL = ("BEGIN", "COMMIT", "ROLLBACK")
# In the bench's own queries (``prefix_with``), which are not the fleet's work.
MARK = "/* fleet-bench */"


def as_superuser(database: str, sql: str) -> str:
    """Run ``sql`` in ``database`` as the local ``postgres`` user (peer authentication)."""
    done = subprocess.run(
        ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1"]
        + ["-d", database, "-c", sql],
        capture_output=True,
        text=True,
        cwd="/",
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"psql: {done.stderr.strip()}")
    return done.stdout.strip()


def enable_statements(url: str) -> str | None:
    """Make pg_stat_statements usable in ``url``'s database; None, or why it cannot be."""
    if os.geteuid() != 0:
        return "pg_stat_statements needs root here (psql runs as the postgres user)"
    database = sa.make_url(url).database or ""
    try:
        if "pg_stat_statements" not in as_superuser(database, "SHOW shared_preload_libraries"):
            return "pg_stat_statements is not loaded (tools/start-postgres.sh loads it)"
        as_superuser(database, "CREATE EXTENSION pg_stat_statements")
    except (OSError, RuntimeError) as exc:
        return str(exc)
    return None


def reset_statements(url: str) -> None:
    database = sa.make_url(url).database or ""
    as_superuser(
        database,
        "SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database "
        "WHERE datname = current_database()), 0)",
    )


@dataclass(frozen=True)
class Statement:
    query: str
    calls: int
    ms: float


def read_statements(url: str) -> list[Statement]:
    """This database's statements since the reset (the bench's own reads left out)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT query, calls, total_exec_time FROM pg_stat_statements "
                    "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
                )
            ).all()
    finally:
        engine.dispose()
    return [
        Statement(query or "", int(calls), float(ms))
        for query, calls, ms in rows
        if "pg_stat_statements" not in (query or "") and MARK not in (query or "")
    ]


@dataclass(frozen=True)
class DbWork:
    """Per build: statements (transaction control apart), commits, server ms."""

    statements: float
    commits: float
    server_ms: float
    top: list[tuple[str, float, float]]  # (query, calls per build, ms per build)

    @property
    def ceiling(self) -> float:
        """Builds per second one server can take if statement time were all it had."""
        return 1000.0 / self.server_ms if self.server_ms else float("inf")


def db_work(statements: list[Statement], builds: int) -> DbWork:
    work = [s for s in statements if s.query.strip().upper() not in CONTROL]
    commits = sum(s.calls for s in statements if s.query.strip().upper() == "COMMIT")
    ranked = sorted(statements, key=lambda s: s.ms, reverse=True)[:6]
    return DbWork(
        statements=sum(s.calls for s in work) / builds,
        commits=commits / builds,
        server_ms=sum(s.ms for s in statements) / builds,
        top=[(" ".join(s.query.split())[:70], s.calls / builds, s.ms / builds) for s in ranked],
    )


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """(its own, its ended children's) CPU seconds: an agent's children are its
    qemu-img runs, the postmaster's the backends it reaped."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return (utime + stime) / TICKS, (cutime + cstime) / TICKS


def cpu_of(pids: list[int]) -> dict[int, tuple[float, float]]:
    """CPU seconds so far of each live process among ``pids`` (see ``_cpu_seconds``)."""
    found = {}
    for pid in pids:
        try:
            found[pid] = _cpu_seconds(pid)
        except (OSError, IndexError, ValueError):
            continue  # ended meanwhile
    return found


def server_pids() -> list[int]:
    """The PostgreSQL server's processes (postmaster, backends, WAL writer, ...)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def connections(engine: sa.Engine) -> int:
    """Sessions open on this database now (the bench's own one included)."""
    with engine.connect() as conn:
        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        return int(conn.execute(sa.text(f"{query} {MARK}")).scalar_one())


def cpu_delta(
    before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]]
) -> tuple[float, float]:
    """(own, children's) CPU seconds spent between two readings (a new process counts from 0)."""
    own = sum(now[0] - before.get(pid, (0.0, 0.0))[0] for pid, now in after.items())
    children = sum(now[1] - before.get(pid, (0.0, 0.0))[1] for pid, now in after.items())
    return own, children
