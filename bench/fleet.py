"""A fleet on one PostgreSQL log: throughput with 1, 2, 4 and 8 agents, pick-up, database work.

    .venv/bin/python -m bench.fleet [--builds 400] [--agents 1,2,4,8]

For each fleet size k, on a fresh database of the test server
(``SPAWNFLOW_BENCH_PG_URL`` overrides the URL): k ``spawnflow agent``
processes (hosts f1..fk, libvirt's ``test:///default``, each its own state
path and ``WORKERS`` build threads) start and report running, then:

1. **Throughput.** The agents are paused (SIGSTOP), N builds are posted
   round robin over the hosts with ``spawnflow.client``, and the agents
   continue (SIGCONT): they start together on a full queue, and the posting
   is not billed to them. builds/s = N / (last build final - first build
   RUNNING), from the events' own timestamps; the baseline is one agent,
   measured in the same run.
2. **Pick-up latency.** With the queue empty, builds are posted one at a
   time at about half the throughput just measured; QUEUED to RUNNING from
   the events' timestamps (the NOTIFY of the queuing transaction wakes the
   host's agent; its poll every 2 s is the backstop), p50 and p99.
3. **The database's work** during 1 (``bench.fleet_db``): statements and
   commits per build and the server's statement time per build from
   ``pg_stat_statements``; from that, the ceiling one server sets,
   builds/s = 1 / (server time per build); and the CPU time of the server's
   and of the agents' processes per build.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from bench import fleet_db
from bench.persistence import DEFAULT_PG_URL, pg_available
from spawnflow.client import Client
from spawnflow.persistence import lifecycle
from spawnflow.persistence import tables as t
from spawnflow.persistence.eventlog import EventLog

ROOT = Path(__file__).resolve().parents[1]
FLEETS = (1, 2, 4, 8)
BUILDS = 400
WORKERS = 5  # build threads per agent: 8 agents' connection pools stay within 100
LATENCY_BUILDS = 60


@dataclass
class Row:
    agents: int
    rate: float = 0.0  # builds/s
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    work: fleet_db.DbWork | None = None
    server_cpu_ms: float = 0.0  # per build
    agent_cpu_ms: float = 0.0  # per build, the agents' Python processes
    qemu_img_ms: float = 0.0  # per build, their qemu-img children
    connections: int = 0  # the most sessions open on the database at once
    no_stats: str | None = None  # why there are no statement counts


def fresh_database(url: str) -> str:
    name = "sf_fleet_" + uuid.uuid4().hex[:10]
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return sa.make_url(url).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    target = sa.make_url(url)
    admin = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
    admin.dispose()


class Agents:
    """k ``spawnflow agent`` processes on one database."""

    def __init__(self, root: Path, url: str, k: int) -> None:
        self.root, self.url = root, url
        self.hosts = [f"f{n}" for n in range(1, k + 1)]
        self.procs: list[subprocess.Popen[bytes]] = []

    def _conf(self, host: str) -> Path:
        path = self.root / f"{host}.conf"
        path.write_text(
            f"[DEFAULT]\nhost = {host}\nstate_path = {self.root / host}\n"
            f"max_concurrent_builds = {WORKERS}\n"
            "[libvirt]\nconnection_uri = test:///default\nvirt_type = test\n"
            f"[firewall]\ndriver = noop\n[audit]\ninterval = 0\n"
            f"[images]\nallowed_sources = {self.root}\n[database]\nconnection = {self.url}\n"
        )
        return path

    def start(self) -> None:
        for host in self.hosts:
            args = [sys.executable, "-m", "spawnflow.cmd.main", "--config-file"]
            args += [str(self._conf(host)), "agent", "--poll-interval", "2"]
            out = open(self.root / f"{host}.log", "wb")  # noqa: SIM115 - the child's
            self.procs.append(
                subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
            )
        deadline = time.monotonic() + 120
        for host, proc in zip(self.hosts, self.procs, strict=True):
            log = self.root / f"{host}.log"
            while f"agent of host {host} running" not in log.read_text():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"agent {host} did not start:\n{log.read_text()[-2000:]}")
                time.sleep(0.1)

    def signal(self, signum: int) -> None:
        for proc in self.procs:
            proc.send_signal(signum)

    def stop(self) -> None:
        self.signal(signal.SIGCONT)  # a paused agent cannot act on SIGTERM
        self.signal(signal.SIGTERM)
        for proc in self.procs:
            proc.wait(120)


def spec(image: Path) -> dict[str, object]:
    return {
        "instance": {"uuid": str(uuid.uuid4()), "name": "fleet-bench"},
        "flavor": {"vcpus": 1, "memory_mb": 64, "root_gb": 0},
        "image": {"source": str(image), "disk_format": "qcow2"},
    }


def post(client: Client, image: Path, hosts: list[str], n: int, gap: float = 0.0) -> list[str]:
    ids = []
    for i in range(n):
        ids.append(client.start_build(spec(image), host=hosts[i % len(hosts)]))
        if gap:
            time.sleep(gap)
    return ids


def wait_final(engine: sa.Engine, ids: list[str], timeout: float = 1800) -> int:
    """Wait until every build is final (ACTIVE, else an error); the most sessions seen."""
    peak = 0
    deadline = time.monotonic() + timeout
    query = (
        sa.select(t.builds.c.build_id, t.builds.c.state)
        .where(t.builds.c.build_id.in_(ids))
        .prefix_with(fleet_db.MARK)
    )
    while True:
        peak = max(peak, fleet_db.connections(engine))
        with engine.connect() as conn:
            states = dict(conn.execute(query).all())
        if all(lifecycle.is_final(s) for s in states.values()):
            bad = {s for s in states.values() if s != lifecycle.ACTIVE}
            if bad:
                raise RuntimeError(f"builds ended {sorted(bad)}")
            return peak
        if time.monotonic() > deadline:
            raise RuntimeError("builds did not finish in time")
        time.sleep(1.0)


def build_times(engine: sa.Engine, ids: list[str]) -> dict[str, dict[str, float]]:
    """Per build: when it was QUEUED, RUNNING (first time) and ACTIVE (the events' ts)."""
    ev = t.events.c
    query = (
        sa.select(ev.build_id, ev.to_state, sa.func.min(ev.ts))
        .where(ev.kind == "build", ev.build_id.in_(ids))
        .group_by(ev.build_id, ev.to_state)
        .prefix_with(fleet_db.MARK)
    )
    found: dict[str, dict[str, float]] = {}
    with engine.connect() as conn:
        for build_id, state, ts in conn.execute(query):
            found.setdefault(build_id, {})[state] = float(ts)
    return found


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


@contextmanager
def fleet(k: int, pg_url: str) -> Iterator[tuple[Agents, str, Path, str | None]]:
    """k agents running on a fresh database: (agents, url, image, why no statements)."""
    url = fresh_database(pg_url)
    try:
        no_stats = fleet_db.enable_statements(url)
        EventLog.open(url).close()  # the schema, before the agents start
        with tempfile.TemporaryDirectory(prefix="sf-bench-fleet-") as tmp:
            root = Path(tmp)
            image = root / "image.qcow2"
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True
            )
            agents = Agents(root, url, k)
            try:
                agents.start()
                yield agents, url, image, no_stats
            finally:
                agents.stop()
    finally:
        drop_database(url)


def measure(k: int, builds: int, pg_url: str) -> Row:
    row = Row(k)
    with fleet(k, pg_url) as (agents, url, image, no_stats):
        row.no_stats = no_stats
        # One session kept: a new one per look would bill its start to the server.
        engine = sa.create_engine(url, pool_size=1, max_overflow=0)
        with Client(url) as client:
            agents.signal(signal.SIGSTOP)
            # The queuing is the database's work too: counted from here.
            if no_stats is None:
                fleet_db.reset_statements(url)
            server = fleet_db.cpu_of(fleet_db.server_pids())
            ids = post(client, image, agents.hosts, builds)
            before = server, fleet_db.cpu_of([p.pid for p in agents.procs])
            agents.signal(signal.SIGCONT)
            row.connections = wait_final(engine, ids)
            server_cpu = fleet_db.cpu_delta(before[0], fleet_db.cpu_of(fleet_db.server_pids()))
            agent_cpu = fleet_db.cpu_delta(before[1], fleet_db.cpu_of(list(before[1])))
            if no_stats is None:
                row.work = fleet_db.db_work(fleet_db.read_statements(url), builds)
            times = build_times(engine, ids)
            span = max(b[lifecycle.ACTIVE] for b in times.values()) - min(
                b[lifecycle.RUNNING] for b in times.values()
            )
            row.rate = builds / span
            row.server_cpu_ms = sum(server_cpu) * 1000 / builds
            row.agent_cpu_ms, row.qemu_img_ms = (cpu * 1000 / builds for cpu in agent_cpu)
            # Pick-up: one build at a time, at about half the fleet's throughput.
            ids = post(client, image, agents.hosts, LATENCY_BUILDS, gap=2 / row.rate)
            wait_final(engine, ids)
            waits = [
                (b[lifecycle.RUNNING] - b[lifecycle.QUEUED]) * 1000
                for b in build_times(engine, ids).values()
            ]
            row.p50_ms, row.p99_ms = percentile(waits, 0.5), percentile(waits, 0.99)
        engine.dispose()
    return row


def report(rows: list[Row], builds: int) -> None:
    base, cpus = rows[0].rate, os.cpu_count() or 1
    print(
        f"fleet on one PostgreSQL: {builds} builds per fleet size on test:///default, "
        f"{WORKERS} build threads per agent, {cpus} CPUs; CPU ms per build"
    )
    print(
        f"{'agents':>6} {'builds/s':>9} {'x 1':>6} {'pick-up p50':>12} {'p99':>8} "
        f"{'agents':>7} {'qemu-img':>9} {'server':>7} {'machine max/s':>14} {'sessions':>9}"
    )
    for r in rows:
        cpu = r.agent_cpu_ms + r.qemu_img_ms + r.server_cpu_ms
        print(
            f"{r.agents:6d} {r.rate:9.1f} {r.rate / base:6.2f} {r.p50_ms:10.1f}ms "
            f"{r.p99_ms:6.1f}ms {r.agent_cpu_ms:7.1f} {r.qemu_img_ms:9.1f} "
            f"{r.server_cpu_ms:7.1f} {cpus * 1000 / cpu:14.1f} {r.connections:9d}"
        )
    two = next((r for r in rows if r.agents == 2), None)
    if two is not None and rows[0].agents == 1:
        print(f"2 agents / 1 agent: {two.rate / base:.2f}x (target >= 1.7x)")
    print(
        "the database's work per build: statements, commits, statement time (ms, COMMIT's "
        "WAL flush included), the ceiling it sets (builds/s = 1 / that time; target >= 200), "
        "and the ceiling by the server's CPU per core"
    )
    print(f"{'agents':>6} {'SQL':>7} {'commits':>8} {'ms':>7} {'ceiling/s':>10} {'per core/s':>11}")
    for r in rows:
        if r.work is None:
            print(f"{r.agents:6d}  n/a: {r.no_stats}")
            continue
        w = r.work
        print(
            f"{r.agents:6d} {w.statements:7.1f} {w.commits:8.1f} {w.server_ms:7.2f} "
            f"{w.ceiling:10.0f} {1000 / r.server_cpu_ms:11.0f}"
        )
    if rows[0].work is not None:
        print(f"top statements per build ({rows[0].agents} agent):")
        for query, calls, ms in rows[0].work.top:
            print(f"  {calls:6.2f} calls {ms:6.3f} ms  {query}")


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet")
    parser.add_argument(
        "--builds", type=int, default=int(os.environ.get("SPAWNFLOW_BENCH_FLEET_BUILDS", BUILDS))
    )
    parser.add_argument("--agents", default=",".join(map(str, FLEETS)))
    args = parser.parse_args(argv)
    pg_url = os.environ.get("SPAWNFLOW_BENCH_PG_URL", DEFAULT_PG_URL)
    if not pg_available(pg_url):
        print("fleet: skipped, no PostgreSQL (tools/start-postgres.sh)")
        return []
    rows = [measure(int(k), args.builds, pg_url) for k in args.agents.split(",")]
    report(rows, args.builds)
    return rows


if __name__ == "__main__":
    main()
