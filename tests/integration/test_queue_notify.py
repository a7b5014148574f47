"""Prompt pick-up on PostgreSQL: the queuing transaction's NOTIFY wakes the host's agent.

A real PostgreSQL; the agent on test:///default. The waiter is woken by a
build queued for its host (and only once it commits), not by one queued for
another host, and falls back to its poll when its listening connection is
killed (as a PostgreSQL restart does), listening again afterwards.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from spawnflow import Agent
from spawnflow.client import Client
from tests.helpers import load_conf, make_qcow2, make_spec
from tests.integration.test_persistence_backends import drop_pg_database, fresh_pg_database

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    url = fresh_pg_database(postgres_url)
    yield url
    drop_pg_database(url)


def waited(agent: Agent, timeout: float) -> tuple[threading.Thread, dict]:
    found: dict = {}
    stop = threading.Event()

    def run() -> None:
        started = time.monotonic()
        found["woken"] = agent.wait_for_work(timeout, stop)
        found["after"] = time.monotonic() - started

    thread = threading.Thread(target=run)
    thread.start()
    found["stop"] = stop
    return thread, found


def test_a_queued_build_wakes_its_hosts_agent_at_once(tmp_path: Path, pg_url: str):
    conf = load_conf(
        tmp_path,
        DEFAULT={"host": "h-notify", "queue_poll_interval": 60},
        database={"connection": pg_url},
        libvirt={"connection_uri": "test:///default", "virt_type": "test"},
        firewall={"driver": "noop"},
    )
    image = make_qcow2(tmp_path / "image.qcow2")
    with Agent(conf) as agent, Client(pg_url) as client:
        agent.wait_for_work(0.1)  # listening from here on
        assert agent.queue_waiter.listening

        # Another host's build wakes nobody here: the poll's timeout ends the wait.
        thread, found = waited(agent, 1.5)
        client.start_build(make_spec(image), host="h-other")
        thread.join()
        assert found["woken"] is False

        thread, found = waited(agent, 60)
        time.sleep(0.2)
        build_id = client.start_build(make_spec(image), host="h-notify")
        thread.join(30)
        assert found["woken"] is True  # long before the 60 s poll
        assert agent.pick_up_queued() == [build_id]
        assert agent.wait(build_id, timeout=60).state == "ACTIVE"

        # The listening connection dies (a PostgreSQL restart does this): the
        # waiter polls, then listens again.
        admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE query LIKE 'LISTEN%' AND datname = current_database()"
                )
            )
        admin.dispose()
        assert agent.wait_for_work(3) is False
        deadline = time.monotonic() + 30
        while not agent.queue_waiter.listening and time.monotonic() < deadline:
            agent.wait_for_work(0.5)
        assert agent.queue_waiter.listening
        thread, found = waited(agent, 60)
        time.sleep(0.2)
        client.start_build(make_spec(image), host="h-notify")
        thread.join(30)
        assert found["woken"] is True
