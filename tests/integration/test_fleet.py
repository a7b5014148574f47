"""A fleet on one PostgreSQL log: 8 agents, 4 clients, kills and a database restart.

Eight ``spawnflow agent`` processes (hosts h1..h8, each on libvirt's
``test:///default``, its own state_path, side effects counted by
tests/integration/fleet_launcher.py) and four client processes
(tests/integration/fleet_client.py) posting builds spread over the hosts,
one new instance each, on a fresh database of the real test server. While
they run, agents are killed -9 and started again and PostgreSQL is really
restarted once (``pg_ctlcluster stop -m fast``, then start). A build a kill
rolled back (its domain went with the killed process) is posted again by
its client. At the end (tests/integration/fleet_checks.py): every instance
has exactly one ACTIVE build, on the host it was placed on; no build is lost
or unknown; each side effect ran once per build, on that build's host (a
step an interruption caught may repeat); each host's leases went 1, 2, ...
and each restart took over from the agent killed before it.

``make test`` runs the reduced form (400 builds, one kill); the full one
(4,000 builds, two kills) is marked ``slow_faults``, left out of a whole-suite
run as the fault suite's sweep is (tests/integration/faults/conftest.py), and
run by ``make bench`` (``SPAWNFLOW_FAULTS_FULL=1``) beside the reduced one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from spawnflow.persistence import lifecycle
from spawnflow.persistence import tables as t
from spawnflow.persistence.eventlog import EventLog
from tests.helpers import make_qcow2, write_conf
from tests.integration.fleet_checks import check_fleet
from tests.integration.fleet_metrics import MetricsPorts, check_metrics_against_log, value
from tests.integration.pg_cluster import Cluster
from tests.integration.test_persistence_backends import drop_pg_database, fresh_pg_database

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
HOSTS = [f"h{n}" for n in range(1, 9)]
CLIENTS = 4
# Builds a host runs at once: 8 agents' connection pools (5 each, plus the
# LISTEN connection) stay well inside the server's 100 connections.
WORKERS = 4
SCRAPE_EVERY = 5.0  # seconds between two scrapes of every agent's metrics
STALL = 180.0  # seconds without a build ending: the run is stuck, fail it
STOP_WAIT = 90.0  # seconds the agents get to stop at the end


@dataclass(frozen=True)
class Size:
    builds: int
    # (fraction of the builds final, what happens then): "kill hN" or "restart pg".
    script: tuple[tuple[float, str], ...]
    timeout: float  # seconds for the clients to see every build final


REDUCED = Size(400, ((0.2, "restart pg"), (0.4, "kill h1")), 600)
FULL = Size(4000, ((0.2, "kill h1"), (0.45, "restart pg"), (0.7, "kill h2")), 3600)


@pytest.fixture
def restartable_pg(postgres_url: str) -> Iterator[tuple[Cluster, str]]:
    cluster = Cluster.serving(postgres_url)
    url = fresh_pg_database(postgres_url)
    try:
        with cluster.running_again():
            yield cluster, url
    finally:
        drop_pg_database(url)


class Fleet:
    """The agent processes, one per host, started, killed and stopped here."""

    def __init__(self, tmp_path: Path, url: str, metrics: MetricsPorts) -> None:
        self.root = tmp_path
        self.url = url
        self.metrics = metrics
        self.procs: dict[str, subprocess.Popen] = {}
        self.starts: Counter[str] = Counter()
        self.effects = {host: tmp_path / f"effects-{host}.txt" for host in HOSTS}

    def conf(self, host: str) -> Path:
        groups = {
            "DEFAULT": {
                "host": host,
                "state_path": self.root / host,
                "max_concurrent_builds": WORKERS,
            },
            "images": {"allowed_sources": self.root / "images"},
            "libvirt": {"connection_uri": "test:///default", "virt_type": "test"},
            "firewall": {"driver": "noop"},
            "audit": {"interval": 0},
            "database": {
                "connection": self.url,
                "retry_interval": 0.2,
                "max_retry_interval": 1.0,
                "max_retries": 300,
            },
            **self.metrics.conf(host),
        }
        return write_conf(self.root / f"{host}.conf", **groups)

    def log(self, host: str) -> Path:
        return self.root / f"agent-{host}-{self.starts[host]}.log"

    def launch(self, host: str) -> None:
        self.starts[host] += 1
        args = [sys.executable, "-m", "tests.integration.fleet_launcher", "--host", host]
        args += ["--effects", str(self.effects[host]), "--", "--config-file", str(self.conf(host))]
        args += ["agent", "--poll-interval", "2"]
        out = open(self.log(host), "ab")  # noqa: SIM115 - the child writes it while it lives
        self.procs[host] = subprocess.Popen(
            args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ}
        )

    def wait_running(self, host: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while f"agent of host {host} running" not in self.log(host).read_text():
            self.check_alive()
            assert time.monotonic() < deadline, f"{host} never started:\n{self.tail(host)}"
            time.sleep(0.2)

    def tail(self, host: str) -> str:
        return "\n".join(self.log(host).read_text().splitlines()[-40:])

    def check_alive(self) -> None:
        for host, proc in self.procs.items():
            assert proc.poll() is None, f"agent {host} exited {proc.returncode}:\n{self.tail(host)}"

    def kill(self, host: str) -> None:
        self.procs[host].send_signal(signal.SIGKILL)
        self.procs[host].wait(30)

    def stop_all(self) -> dict[str, int]:
        """SIGTERM every agent; one still running after STOP_WAIT s is killed (code -9)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return {host: proc.returncode for host, proc in self.procs.items()}


class Progress:
    """Reads how far the run is (retried while the server restarts)."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url, poolclass=sa.pool.NullPool)

    def _scalar(self, query: sa.Select) -> int:
        for _ in range(100):
            try:
                with self.engine.connect() as conn:
                    return int(conn.execute(query).scalar_one())
            except sa.exc.OperationalError:
                time.sleep(0.3)
        raise AssertionError("the database did not answer for 30 s")

    def final(self) -> int:
        return self._scalar(
            sa.select(sa.func.count()).where(t.builds.c.state.in_(sorted(lifecycle.FINAL)))
        )

    def running_on(self, host: str) -> int:
        return self._scalar(
            sa.select(sa.func.count()).where(
                t.builds.c.host == host, t.builds.c.state == lifecycle.RUNNING
            )
        )


def kill_and_restart(fleet: Fleet, progress: Progress, host: str) -> None:
    """SIGKILL ``host``'s agent while it runs builds, then start it again."""
    deadline = time.monotonic() + 30
    while progress.running_on(host) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    fleet.kill(host)
    killed = time.monotonic()
    fleet.launch(host)
    fleet.wait_running(host)
    print(f"        {host} killed, running again {time.monotonic() - killed:.1f}s later")


def run_script(
    size: Size, fleet: Fleet, progress: Progress, clients: list[subprocess.Popen], act: Callable
) -> None:
    """Follow the run; at each fraction of the builds final, do the script's next act.
    Every agent's metrics are scraped every few seconds meanwhile (they must answer)."""
    script = list(size.script)
    deadline = time.monotonic() + size.timeout
    scraped_at = 0.0
    final, moved_at = 0, time.monotonic()
    while any(c.poll() is None for c in clients):
        fleet.check_alive()
        assert time.monotonic() < deadline, f"clients still running after {size.timeout}s"
        now_final = progress.final()
        if now_final != final:
            final, moved_at = now_final, time.monotonic()
        assert time.monotonic() - moved_at < STALL, f"no build ended for {STALL}s ({final} final)"
        if script and now_final >= script[0][0] * size.builds:
            act(script.pop(0)[1])
        if time.monotonic() - scraped_at > SCRAPE_EVERY:
            fleet.metrics.scrape_all()
            scraped_at = time.monotonic()
        time.sleep(0.5)
    assert not script, f"the run ended before {script}"


def launch_clients(tmp_path: Path, url: str, image: Path, builds: int) -> list[subprocess.Popen]:
    procs = []
    for index in range(CLIENTS):
        args = [sys.executable, "-m", "tests.integration.fleet_client", "--url", url]
        args += ["--hosts", ",".join(HOSTS), "--builds", str(builds // CLIENTS)]
        args += ["--index", str(index), "--image", str(image)]
        args += ["--out", str(tmp_path / f"client-{index}.json")]
        out = open(tmp_path / f"client-{index}.log", "ab")  # noqa: SIM115 - the child's
        procs.append(subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT))
    return procs


def client_results(tmp_path: Path, procs: list[subprocess.Popen]) -> list[dict]:
    posted = []
    for index, proc in enumerate(procs):
        log = (tmp_path / f"client-{index}.log").read_text()
        assert proc.wait(60) == 0, f"client {index} exited {proc.returncode}:\n{log[-3000:]}"
        posted += json.loads((tmp_path / f"client-{index}.json").read_text())["instances"]
    return posted


@pytest.mark.parametrize(
    "size",
    [pytest.param(REDUCED, id="400"), pytest.param(FULL, id="4000", marks=pytest.mark.slow_faults)],
)
def test_fleet_of_eight_agents_on_one_log(tmp_path: Path, restartable_pg, size: Size):
    cluster, url = restartable_pg
    EventLog.open(url).close()  # the schema, once, before eight agents start
    (tmp_path / "images").mkdir()
    image = make_qcow2(tmp_path / "images" / "image.qcow2", "16M")
    fleet = Fleet(tmp_path, url, MetricsPorts())
    progress = Progress(url)
    killed: set[str] = set()
    started = time.monotonic()
    clients: list[subprocess.Popen] = []

    def act(what: str) -> None:
        print(f"{time.monotonic() - started:6.1f}s  {what} ({progress.final()} builds final)")
        verb, target = what.split()
        if verb == "kill":
            killed.add(target)
            kill_and_restart(fleet, progress, target)
        else:
            cluster.stop()
            time.sleep(1.0)
            # The agents answer scrapes with the database down, and say so.
            down = fleet.metrics.scrape_all()
            assert {h: value(s, "spawnflow_database_up") for h, s in down.items()} == dict.fromkeys(
                HOSTS, 0.0
            )
            cluster.start()
        print(f"{time.monotonic() - started:6.1f}s  done ({progress.final()} builds final)")

    try:
        for host in HOSTS:
            fleet.launch(host)
        for host in HOSTS:
            fleet.wait_running(host)
        clients = launch_clients(tmp_path, url, image, size.builds)
        run_script(size, fleet, progress, clients, act)
        posted = client_results(tmp_path, clients)
        scraped = fleet.metrics.scrape_all()
    finally:
        for client in clients:
            if client.poll() is None:  # the run failed: its clients go too
                client.kill()
                client.wait()
        codes = fleet.stop_all()
    assert codes == dict.fromkeys(HOSTS, 0), codes
    wall = time.monotonic() - started
    counts = check_fleet(progress.engine, posted, fleet.effects, fleet.starts, killed)
    metrics = check_metrics_against_log(progress.engine, scraped)
    progress.engine.dispose()
    print(
        f"\nfleet: {len(HOSTS)} agents, {CLIENTS} clients, {wall:.0f}s; kills {sorted(killed)}, "
        f"1 PostgreSQL restart; {counts}; metrics ({fleet.metrics.scrapes} scrapes): {metrics}"
    )
