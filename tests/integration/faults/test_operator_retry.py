"""``spawnflow build retry`` on qemu:///system: a rollback that failed for good is finished.

A build fails forward (its port reports network-vif-plugged failed), then the
domain's destroy is refused for good during the rollback (the harness's fault
injector, tests/faults.py): the build ends FAILED with its domain, tap,
secret, filters and instance directory left on the host. The fault is lifted
(the operator fixed the cause), ``spawnflow build retry`` is run, and a fresh
agent (its start alone never touches a FAILED build) picks the request up and
reverts what is left: ROLLED_BACK, nothing left.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from spawnflow import Agent
from spawnflow.persistence import lifecycle
from tests.faults import LIBVIRT, PERMANENT, REVERT, Fault, Injector, Site
from tests.helpers import history_of, make_spec, tap_vif

# The module's fixtures and helpers (luks_template is a fixture: imported to be found).
from tests.integration.faults.test_fault_injection import (  # noqa: F401
    Neutron,
    _luks_volume,
    leftovers,
    luks_template,
)

DESTROY_REFUSED = Fault(Site(LIBVIRT, "domain.destroy", "domain_create", REVERT), PERMANENT)


def cli(conf_file: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "spawnflow.cmd.main", "--config-file", str(conf_file), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_retry_after_a_permanent_revert_failure_leaves_nothing(
    injector: Injector,
    real_conf: Any,
    qcow2_image: Path,
    luks_template: tuple[Path, Path],  # noqa: F811
    libvirt_conn: Any,
    cleanup: list[str],
    tmp_path: Path,
) -> None:
    conf = real_conf()
    port = tap_vif(active=False)
    spec = make_spec(qcow2_image, vifs=[port], volumes=[_luks_volume(luks_template, tmp_path)])
    instance = spec["instance"]["uuid"]
    cleanup.append(instance)
    neutron = Neutron(injector, instance, port["id"], "failed")
    injector.arm(DESTROY_REFUSED)
    with neutron.agent_for(conf) as agent:
        outcome = agent.wait(agent.start_build(spec), timeout=180)
    assert outcome.state == lifecycle.FAILED, outcome
    left = leftovers(libvirt_conn, conf, spec, outcome)
    assert any(thing.startswith("domain ") for thing in left), left
    assert any(thing.startswith("tap ") for thing in left), left

    injector.disarm()  # the operator fixed the cause
    result = cli(tmp_path / "spawnflow.conf", "build", "retry", outcome.build_id, "--note", "ok")
    assert result.returncode == 0, result.stderr
    with Agent(conf) as again:
        assert again.recovered == {}  # a FAILED build is never recovered by itself
        assert again.pick_up_requests() == [outcome.build_id]
        retried = again.wait(outcome.build_id, timeout=180)
    assert retried.state == lifecycle.ROLLED_BACK, retried
    assert leftovers(libvirt_conn, conf, spec, retried) == []
    build = history_of(conf, outcome.build_id)
    states = [t.to_state for t in build.lifecycle]
    assert states[-3:] == [lifecycle.FAILED, lifecycle.REVERTING, lifecycle.ROLLED_BACK]
    assert "rollback retried by" in build.diagnose().text
