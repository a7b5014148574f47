"""A retried start of an instance whose build went ACTIVE returns that build (test:///default)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import libvirt
import yaml

import spawnflow.conf
from spawnflow import Agent
from spawnflow.persistence.eventlog import EventLog
from tests.functional.conftest import TEST_DRIVER
from tests.helpers import load_conf, make_spec


def test_start_build_of_an_active_instance_returns_the_active_build(
    tmp_path: Path, image: Path, test_conn: libvirt.virConnect
):
    conf = load_conf(
        tmp_path,
        libvirt=TEST_DRIVER,
        firewall={"driver": "noop"},
        images={"allowed_sources": tmp_path},
    )
    spec = make_spec(image)
    instance = spec["instance"]["uuid"]
    try:
        with Agent(conf) as agent:
            first = agent.start_build(spec)
            assert agent.wait(first, timeout=60).state == "ACTIVE"
            log = agent.eventlog
            events = len(log.events(first))
            again = agent.start_build(spec)
            assert again == first
            assert agent.wait(again, timeout=5).state == "ACTIVE"
            assert [b.build_id for b in log.builds(instance_uuid=instance)] == [first]
            assert len(log.events(first)) == events  # nothing ran again

        # spawn --no-wait of the same instance queues nothing either.
        spec_path = tmp_path / "vm.yaml"
        spec_path.write_text(yaml.safe_dump(spec))
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "spawnflow.cmd.main",
                "--config-file",
                str(tmp_path / "spawnflow.conf"),
                "spawn",
                "--no-wait",
                str(spec_path),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert f"build {first} of instance {instance} is already ACTIVE" in result.stdout
        log = EventLog.open(spawnflow.conf.database_url(conf))
        assert [b.build_id for b in log.builds(instance_uuid=instance)] == [first]
        log.close()
    finally:
        dom = test_conn.lookupByUUIDString(instance)
        dom.destroy()
        dom.undefine()
