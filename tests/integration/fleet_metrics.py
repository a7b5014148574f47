"""The fleet test's metrics: each agent's Prometheus endpoint scraped, checked against the log.

Every agent of the fleet serves ``[metrics] bind`` on a port of its own.
The test scrapes them while it runs (each scrape must answer, a PostgreSQL
restart included) and once more when every build is final, before the agents
stop; ``check_metrics_against_log`` then compares each agent's counters with
what the log says the same process did. A counter lives as long as its
process: an agent killed -9 and started again counts from its new start, so
its runs are compared with the builds that ended after its lease's STARTED
event (the killed one had ended none after that: it was dead).
"""

from __future__ import annotations

import socket
import urllib.request
from collections import Counter
from typing import Any

import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from spawnflow.persistence import lifecycle
from spawnflow.persistence import tables as t

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
OUTCOMES = (lifecycle.ACTIVE, lifecycle.ROLLED_BACK, lifecycle.FAILED)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


class MetricsPorts:
    """A port per agent start; scrapes of the agents that run now."""

    def __init__(self) -> None:
        self.ports: dict[str, int] = {}
        self.scrapes = 0

    def conf(self, host: str) -> dict[str, dict[str, Any]]:
        self.ports[host] = free_port()
        return {"metrics": {"bind": f"127.0.0.1:{self.ports[host]}"}}

    def scrape_all(self) -> dict[str, Samples]:
        found = {h: scrape(f"http://127.0.0.1:{p}/metrics") for h, p in self.ports.items()}
        self.scrapes += 1
        return found


def _ended_since(engine: sa.Engine) -> dict[str, Counter[str]]:
    """Per host: the spawn builds that reached each final state after the host's
    newest agent STARTED (seq order; PostgreSQL assigns seq at insert)."""
    with engine.connect() as conn:
        starts = dict(
            conn.execute(
                sa.select(t.events.c.name, sa.func.max(t.events.c.seq))
                .where(t.events.c.kind == "agent", t.events.c.to_state == "STARTED")
                .group_by(t.events.c.name)
            ).all()
        )
        rows = conn.execute(
            sa.select(t.builds.c.host, t.events.c.to_state, t.events.c.seq)
            .join(t.builds, t.builds.c.build_id == t.events.c.build_id)
            .where(t.events.c.kind == "build", t.events.c.to_state.in_(OUTCOMES))
        ).all()
    ended: dict[str, Counter[str]] = {host: Counter() for host in starts}
    for host, state, seq in rows:
        if seq > starts[host]:
            ended[host][state] += 1
    return ended


def check_metrics_against_log(engine: sa.Engine, scraped: dict[str, Samples]) -> dict[str, int]:
    """Each agent's counts equal the log's: runs ended by outcome since it started, all
    runs it began ended, nothing in progress or queued; what the fleet's agents
    counted in all (for the report)."""
    ended = _ended_since(engine)
    assert set(scraped) == set(ended), (sorted(scraped), sorted(ended))
    totals: Counter[str] = Counter()
    for host, samples in scraped.items():
        finished = {
            outcome: value(
                samples, "spawnflow_builds_finished_total", kind="spawn", outcome=outcome
            )
            for outcome in OUTCOMES
        }
        assert finished == {o: float(ended[host][o]) for o in OUTCOMES}, (host, finished)
        started = value(samples, "spawnflow_builds_started_total", kind="spawn")
        assert started == sum(finished.values()), (host, started, finished)
        assert value(samples, "spawnflow_builds_in_progress") == 0, host
        assert value(samples, "spawnflow_queue_depth") == 0, host
        assert value(samples, "spawnflow_database_up") == 1, host
        totals["finished"] += int(sum(finished.values()))
        totals["recoveries"] += int(
            sum(v for (name, _), v in samples.items() if name == "spawnflow_recoveries_total")
        )
        totals["db_errors"] += int(value(samples, "spawnflow_database_errors_total", where="build"))
        totals["renewals"] += int(value(samples, "spawnflow_lease_renewals_total"))
    # The PostgreSQL restart met running builds: some agent counted it.
    assert totals["db_errors"] > 0, totals
    return dict(totals)
