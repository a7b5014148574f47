"""The crash harness: the agent in a subprocess, killed at a fault point, restarted."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import spawnflow.conf
from spawnflow.engine.agent import queue_build
from spawnflow.flows.spec import parse_spec
from spawnflow.persistence import lifecycle
from spawnflow.persistence.backend import EventLogBackend
from spawnflow.persistence.eventlog import EventLog
from tests.helpers import write_conf
from tests.integration.conftest import (  # noqa: F401 - fixtures shared with integration
    cleanup,
    libvirt_conn,
    libvirt_uri,
    linux_bridge,
    qcow2_image,
)

ROOT = Path(__file__).resolve().parents[2]


class Harness:
    def __init__(self, tmp_path: Path, uri: str, policy: str, host: str, **extra: dict):
        groups = {
            "DEFAULT": {"state_path": tmp_path / "state", "host": host},
            "images": {"allowed_sources": tmp_path},
            "libvirt": {"connection_uri": uri, "virt_type": "qemu", "boot_timeout": 60},
            "firewall": {"driver": "nwfilter"},
            "network": {"vif_plugging_timeout": 30},
            "recovery": {"policy": policy, "lease_seconds": 6, "graceful_stop_timeout": 20},
        }
        for group, options in extra.items():
            groups.setdefault(group, {}).update(options)
        self.conf_path = write_conf(tmp_path / "crash.conf", **groups)
        self.conf = spawnflow.conf.load(["--config-file", str(self.conf_path)])
        self.log_dir = tmp_path

    def queue(self, spec: dict) -> str:
        log = EventLog.open(spawnflow.conf.database_url(self.conf))
        backend = EventLogBackend(eventlog=log)
        build_id, _ = queue_build(log, backend, parse_spec(spec), self.conf.host)
        backend.close()
        log.close()
        return build_id

    def launch(self, *faults: str, name: str = "agent") -> subprocess.Popen:
        args = [sys.executable, "-m", "tests.crash.launcher"]
        for fault in faults:
            args += ["--fault", fault]
        args += ["--", "--config-file", str(self.conf_path), "agent", "--poll-interval", "0.2"]
        # The child writes its log for as long as it lives; this process keeps
        # no use for the handle, so no context manager closes it under the child.
        out = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115
        return subprocess.Popen(
            args,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def output(self, name: str = "agent") -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text() if path.exists() else ""

    def state(self, build_id: str) -> str:
        log = EventLog.open(spawnflow.conf.database_url(self.conf), upgrade=False)
        try:
            return log.get_build(build_id).state
        finally:
            log.close()

    def wait_final(self, build_id: str, proc: subprocess.Popen, timeout: float = 150) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state(build_id)
            if lifecycle.is_final(state):
                return state
            if proc.poll() is not None:
                raise AssertionError(f"agent exited {proc.returncode}:\n{self.output()}")
            time.sleep(0.3)
        raise AssertionError(f"build {build_id} still {self.state(build_id)}:\n{self.output()}")

    @staticmethod
    def stop(proc: subprocess.Popen) -> int:
        if proc.poll() is None:
            proc.terminate()
        return proc.wait(60)
