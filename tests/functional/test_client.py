"""``spawnflow.client``: builds placed on a host from a process with no agent (issue 13).

The agent runs in this process on test:///default; the client is another
object on the same database (and, once, another process in which libvirt
and pyroute2 cannot even be imported).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import spawnflow.conf
from spawnflow import Agent
from spawnflow.client import Client
from spawnflow.exceptions import InvalidSpec, SpawnflowError
from tests.helpers import make_spec, new_uuid


@pytest.fixture
def client(conf, agent):
    with Client(spawnflow.conf.database_url(conf)) as found:
        yield found


def test_a_build_placed_by_the_client_is_run_by_that_hosts_agent(agent, client, conf, image):
    spec = make_spec(image)
    build_id = client.start_build(spec, host=conf.host)
    assert client.state(build_id) == "QUEUED"
    assert client.start_build(spec, host=conf.host) == build_id  # a retry: the same build
    assert agent.pick_up_queued() == [build_id]
    assert client.wait(build_id, timeout=60).state == "ACTIVE"
    # Once ACTIVE, it cannot be placed on another host; it can be deleted from here.
    with pytest.raises(SpawnflowError, match=f"is ACTIVE on host {conf.host}"):
        client.start_build(spec, host="elsewhere")
    delete_id = client.delete_instance(spec["instance"]["uuid"])
    assert agent.pick_up_queued() == [delete_id]
    assert client.wait(delete_id, timeout=60).state == "DELETED"


def test_one_instance_is_never_queued_on_two_hosts(client, conf, image):
    spec = make_spec(image)
    build_id = client.start_build(spec, host="h1")
    with pytest.raises(SpawnflowError, match="is being built on host h1"):
        client.start_build(spec, host="h2")
    client.cancel(build_id)  # h1 has no agent: the cancel waits for it, persisted
    assert client.wait(build_id, timeout=0.3).state == "QUEUED"


@pytest.mark.parametrize("host", ["", " h1", "h1\n", "x" * 256, None])
def test_a_bad_host_is_refused_naming_the_field(client, image, host):
    with pytest.raises(InvalidSpec, match=r"^host: "):
        client.start_build(make_spec(image), host=host)


def test_a_client_needs_an_existing_spawnflow_database(tmp_path):
    with pytest.raises(SpawnflowError, match="holds no spawnflow history"):
        Client(f"sqlite:///{tmp_path}/none.sqlite")
    assert not (tmp_path / "none.sqlite").exists()


def test_the_client_works_where_libvirt_and_netlink_cannot_be_imported(agent, conf, image):
    url = spawnflow.conf.database_url(conf)
    spec = make_spec(image)
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["libvirt"] = None      # import libvirt -> ImportError
        sys.modules["pyroute2"] = None
        from spawnflow.client import Client
        with Client({url!r}) as client:
            print(client.start_build({spec!r}, host={conf.host!r}))
        assert "libvirt" not in [m for m in sys.modules if sys.modules[m] is not None]
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert run.returncode == 0, run.stderr
    build_id = run.stdout.strip()
    assert agent.pick_up_queued() == [build_id]
    assert agent.wait(build_id, timeout=60).state == "ACTIVE"


def test_agent_of_another_host_never_runs_a_placed_build(tmp_path, conf, image):
    url = spawnflow.conf.database_url(conf)
    with Agent(conf) as mine, Client(url) as client:
        build_id = client.start_build(make_spec(image), host="other-" + new_uuid()[:8])
        assert mine.pick_up_queued() == []
        assert client.state(build_id) == "QUEUED"


def test_cli_places_a_build_on_another_host_and_counts_builds_per_host(
    agent, conf, image, tmp_path
):
    import json

    from tests.functional.test_history_cli import cli, ok, refused

    conf_file = tmp_path / "spawnflow.conf"
    spec_file = tmp_path / "vm.json"
    spec_file.write_text(json.dumps(make_spec(image)))
    out = ok(cli(conf_file, "spawn", str(spec_file), "--no-wait", "--host", "cmp-9"))
    assert "queued for the agent of host cmp-9" in out
    refused(cli(conf_file, "spawn", str(spec_file), "--host", "cmp-9"), "--host needs --no-wait")
    refused(cli(conf_file, "spawn", str(spec_file), "--no-wait", "--host", " x"), "host: ' x'")
    mine = agent.start_build(make_spec(image))
    assert agent.wait(mine, timeout=60).state == "ACTIVE"
    rows = ok(cli(conf_file, "history", "stats", "--by", "host", "-f", "json"))
    by_host = {row["Host"]: row for row in json.loads(rows)}
    assert by_host["cmp-9"]["Builds"] == 1 and by_host["cmp-9"]["Unfinished"] == 1
    assert by_host[conf.host]["ACTIVE"] == 1 and by_host[conf.host]["Unfinished"] == 0
    listed = ok(cli(conf_file, "history", "list", "--host", "cmp-9", "-f", "value", "-c", "Host"))
    assert listed.split() == ["cmp-9"]


def test_a_log_that_cannot_answer_now_is_one_clear_exception(agent, conf, image, tmp_path):
    import sqlite3

    from spawnflow.exceptions import LogUnavailable

    path = spawnflow.conf.database_url(conf).removeprefix("sqlite:///")
    spec = make_spec(image)
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # another writer holds the log past the busy timeout
    try:
        with (
            Client(f"sqlite:///{path}?timeout=0.2") as client,
            pytest.raises(LogUnavailable, match="unavailable"),
        ):
            client.start_build(spec, host=conf.host)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    with Client(spawnflow.conf.database_url(conf)) as client:
        build_id = client.start_build(spec, host=conf.host)  # the retry: one build
        assert [
            b.build_id for b in agent.eventlog.builds(instance_uuid=spec["instance"]["uuid"])
        ] == [build_id]
