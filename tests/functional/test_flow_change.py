"""A flow changed between two agent runs: its interrupted build is rolled back, or held.

Agent A runs a build until it waits for network-vif-plugged and is stopped
(the build is left INTERRUPTED). Then a step's version changes, as a new
release would change it, and agent B starts: the build is never resumed.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from spawnflow import Agent
from spawnflow.flows.image import ImageStep
from spawnflow.flows.spawn import flow_version
from spawnflow.flows.vifs import VifsStep
from spawnflow.persistence import lifecycle
from spawnflow.persistence.recovery_rules import RECOVERY_HELD
from tests.functional.conftest import TEST_DRIVER
from tests.helpers import bridge_vif, history_of, leaks, load_conf, make_spec


def conf_for(tmp_path: Path, **recovery):
    return load_conf(
        tmp_path,
        libvirt=TEST_DRIVER,
        firewall={"driver": "noop"},
        recovery={"policy": "resume", **recovery},
    )


def interrupted_build(conf, spec) -> str:
    """Agent A runs ``spec`` until the resume step waits for its port, then stops."""
    waiting = threading.Event()

    def progress(build_id, step, state, elapsed):
        if step == "resume" and state == "RUNNING":
            waiting.set()

    agent = Agent(conf, progress=progress)
    agent.start()
    try:
        build_id = agent.start_build(spec)
        assert waiting.wait(60), "the build never reached the resume step"
    finally:
        agent.stop()
    assert history_of(conf, build_id).state == lifecycle.INTERRUPTED
    return build_id


def change_flow(monkeypatch) -> tuple[str, str]:
    """A new release: the vifs step's version goes up. Returns (old, new) flow versions."""
    old = flow_version()
    monkeypatch.setattr(VifsStep, "step_version", (1, 1))
    return old, flow_version()


def recovery_reasons(conf, build_id) -> list[str]:
    return [
        str((t.detail or {}).get("reason", ""))
        for t in history_of(conf, build_id).lifecycle
        if t.from_state == lifecycle.INTERRUPTED
    ]


def test_a_changed_flow_rolls_back_instead_of_resuming(
    tmp_path, image, bridge, test_conn, monkeypatch
):
    conf = conf_for(tmp_path)
    spec = make_spec(image, vifs=[bridge_vif(bridge, active=False)])
    build_id = interrupted_build(conf, spec)
    old, new = change_flow(monkeypatch)
    told = history_of(conf, build_id).diagnose(flow_version=new).text
    assert f"roll it back on start, because flow changed from {old} to {new}" in told
    with Agent(conf) as agent_b:
        outcome = agent_b.wait(build_id, timeout=60)
    assert outcome.state == lifecycle.ROLLED_BACK, outcome
    expected = f"flow changed from {old} to {new}: rolled back rather than resumed"
    assert any(expected in reason for reason in recovery_reasons(conf, build_id))
    assert leaks(test_conn, spec["instance"]["uuid"], Path(conf.state_path) / "instances") == []


def test_a_held_build_waits_for_the_operator(tmp_path, image, bridge, test_conn, monkeypatch):
    conf = conf_for(tmp_path, on_flow_change="hold")
    spec = make_spec(image, vifs=[bridge_vif(bridge, active=False)])
    build_id = interrupted_build(conf, spec)
    old, new = change_flow(monkeypatch)
    events_before_b = len(history_of(conf, build_id).lifecycle)
    for _start in range(2):  # later starts leave it alone too, and record nothing more
        with Agent(conf) as agent_b:
            assert agent_b.wait(build_id, timeout=1).state == lifecycle.INTERRUPTED
    build = history_of(conf, build_id)
    assert len(build.lifecycle) == events_before_b  # B moved it nowhere
    holds = [e for e in build.external_events if e.name == RECOVERY_HELD]
    assert len(holds) == 1, holds
    assert all(s.state != "REVERTED" for s in build.steps)
    told = build.diagnose(flow_version=new, on_flow_change="hold").text
    assert f"held for the operator, because flow changed from {old} to {new}" in told

    with Agent(conf) as operator_agent:
        operator_agent.rollback_build(build_id, note="flow changed under it")
        outcome = operator_agent.wait(build_id, timeout=60)
    assert outcome.state == lifecycle.ROLLED_BACK, outcome
    assert leaks(test_conn, spec["instance"]["uuid"], Path(conf.state_path) / "instances") == []


def _older_shape(execute, drop_key, nested: str | None = None):
    """``execute`` returning what the previous flow version stored: without ``drop_key``."""

    @functools.wraps(execute)
    def run(self, *args, **kwargs):
        result = dict(execute(self, *args, **kwargs))
        if nested is None:
            result.pop(drop_key, None)
        else:
            result[nested] = [
                {k: v for k, v in item.items() if k != drop_key} for item in result[nested]
            ]
        return result

    return run


@pytest.fixture
def existing_bridge(bridge):
    """A bridge made before the build (so no build made it: nothing of it to revert)."""
    with IPRoute() as ipr:
        ipr.link("add", ifname=bridge, kind="bridge")
    return bridge


def test_a_revert_accepts_results_stored_by_the_previous_flow_version(
    tmp_path, image, existing_bridge, test_conn, monkeypatch
):
    """Version N-1 stored results without keys added since (the image's console_log,
    a plug record's created_bridge); version N reverts them, leaving nothing."""
    conf = conf_for(tmp_path)
    spec = make_spec(image, vifs=[bridge_vif(existing_bridge, active=False)])
    with monkeypatch.context() as old_release:
        old_release.setattr(ImageStep, "execute", _older_shape(ImageStep.execute, "console_log"))
        old_release.setattr(
            VifsStep, "execute", _older_shape(VifsStep.execute, "created_bridge", "plugged")
        )
        build_id = interrupted_build(conf, spec)
    stored = {s.name: s.result for s in history_of(conf, build_id).steps}
    assert "console_log" not in stored["image"]
    assert "created_bridge" not in stored["vifs"]["plugged"][0]

    change_flow(monkeypatch)
    with Agent(conf) as agent_b:
        outcome = agent_b.wait(build_id, timeout=60)
    assert outcome.state == lifecycle.ROLLED_BACK, outcome
    assert "flow changed" in outcome.error
    build = history_of(conf, build_id)
    assert {s.name: s.state for s in build.steps}["vifs"] == "REVERTED"
    assert leaks(test_conn, spec["instance"]["uuid"], Path(conf.state_path) / "instances") == []
