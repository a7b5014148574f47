"""diagnose(): what a build waits for, why it failed, what recovery will do, in words."""

from __future__ import annotations

import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import taskflow.engines
from taskflow import states as tf_states
from taskflow.patterns import linear_flow

from spawnflow.history import History
from spawnflow.history.times import clock
from spawnflow.persistence import lifecycle
from spawnflow.persistence import tables as t
from spawnflow.persistence.backend import EventLogBackend
from spawnflow.persistence.eventlog import EventLog
from tests.unit.conftest import STEPS, Step, run_build, run_flow

PORT_A, PORT_B = str(uuid.uuid4()), str(uuid.uuid4())


def history(url: str, build_id: str):
    with History.open(url) as h:
        return h.build(build_id)


def test_rolled_back(log, url):
    build_id = run_build(log, fail_at="image")
    diagnosis = history(url, build_id).diagnose()
    assert diagnosis.kind == "rolled_back" and diagnosis.step == "image"
    assert diagnosis.text == (
        "failed at step image: ImageChecksumMismatch: image: sha256 abc "
        "does not match def; rolled back: 2 steps reverted"
    )


def test_failed_rollback_names_what_is_left(log, url):
    image = {"instance_dir": "/srv/instances/i-1", "created_dir": True, "disk_path": "d"}
    build_id = run_build(log, fail_at="vifs", revert_fail_at="image", results={"image": image})
    text = history(url, build_id).diagnose().text
    assert text.startswith("failed at step vifs: ImageChecksumMismatch")
    assert "rollback failed at step image: FirewallError: cannot undefine filter of image" in text
    assert (
        "2 steps reverted, steps not reverted: disk_info, image; left on the host: "
        "instance directory /srv/instances/i-1; operator action needed"
    ) in text


def test_failed_rollback_without_a_result_names_the_marker(log, url):
    # The step failed (no result), then so did its revert.
    build_id = run_build(log, fail_at="image", revert_fail_at="image")
    text = history(url, build_id).diagnose().text
    assert (
        "left on the host: whatever step image made (find it by the instance directory's "
        f"marker file: {build_id}); operator action needed"
    ) in text


def test_active(log, url):
    build_id = run_build(log)
    diagnosis = history(url, build_id).diagnose()
    assert diagnosis.kind == "active"
    assert diagnosis.text.startswith(f"ACTIVE: all {len(STEPS)} steps succeeded in ")


def test_waiting_for_vif_events_names_ports_since_and_deadline(log, url):
    seen: dict[str, Any] = {}
    since = time.time() - 3

    def inside_resume() -> None:
        build_id = seen["id"] = log.builds(states=frozenset({"RUNNING"}))[0].build_id
        log.record_external_event(build_id, "network-vif-plugged", PORT_A, "completed")
        build = history(url, build_id)
        seen["build"] = build
        seen["text"] = build.diagnose(vif_plugging_timeout=300).text
        seen["late"] = build.diagnose(vif_plugging_timeout=300, now=since + 400).text
        seen["open"] = build.diagnose().text

    run_build(
        log,
        results={
            "vifs": {"expected_events": [PORT_A, PORT_B], "plugged": [], "waiting_since": since}
        },
        hooks={"resume": inside_resume},
    )
    build = seen["build"]
    assert build.state == "RUNNING" and [s.name for s in build.current_steps] == ["resume"]
    (wait,) = build.waits
    assert (wait.step, wait.tags, wait.outstanding) == ("vifs", [PORT_A, PORT_B], [PORT_B])
    got = build.external_events[0]
    expected = (
        f"waiting for network-vif-plugged for port {PORT_B} since {clock(since)}, "
        f"deadline {clock(since + 300)}; received {PORT_A} completed at "
        f"{clock(got.at)}; step resume running since "
    )
    assert seen["text"].startswith(expected), seen["text"]
    assert (
        "passed 100s ago" in seen["late"] and "is the agent of host cmp-1 running" in seen["late"]
    )
    assert "deadline" not in seen["open"]  # no timeout given: no deadline claimed


def test_running_step_and_dead_agent(log, url):
    if not hasattr(t, "agents"):
        pytest.skip("no agents table in this schema")
    seen: dict[str, Any] = {}

    def inside_image() -> None:
        build_id = log.builds(states=frozenset({"RUNNING"}))[0].build_id
        with log.transaction() as conn:
            conn.execute(
                sa.insert(t.agents).values(
                    host="cmp-1",
                    agent_id=str(uuid.uuid4()),
                    pid=1,
                    started_at=time.time() - 900,
                    heartbeat_at=time.time() - 600,
                )
            )
        seen["text"] = history(url, build_id).diagnose(lease_seconds=30).text

    run_build(log, hooks={"image": inside_image})
    assert seen["text"].startswith("running step image since ")
    assert "no live agent on host cmp-1 (last heartbeat 10m00s ago)" in seen["text"]


def snapshot_while(log: EventLog, url: str, tmp_path: Path, step: str) -> tuple[str, str]:
    """Run a build and copy its database while ``step`` runs: the state a kill -9 leaves."""
    copy = tmp_path / "crashed.sqlite"

    def take() -> None:
        source = sqlite3.connect(url.removeprefix("sqlite:///"))
        target = sqlite3.connect(copy)
        source.backup(target)
        source.close()
        target.close()

    build_id = run_build(log, hooks={step: take})
    return build_id, f"sqlite:///{copy}"


def rollback_flow(eventlog: EventLog, build_id: str, reason: str) -> None:
    """Roll back every step as recovery does (intentions REVERT, then run)."""
    backend = EventLogBackend(eventlog=eventlog)
    book = backend.get_connection().get_logbook(build_id)
    flow_detail = next(iter(book))
    engine = taskflow.engines.load(
        linear_flow.Flow("spawn").add(*[Step(n) for n in STEPS]),
        flow_detail=flow_detail,
        book=book,
        backend=backend,
        engine="serial",
    )
    engine.compile()
    engine.prepare()
    for ad in flow_detail:
        engine.storage.set_atom_intention(ad.name, tf_states.REVERT)
    eventlog.transition_build(build_id, lifecycle.REVERTING, payload={"reason": reason})
    engine.run()
    eventlog.transition_build(build_id, lifecycle.ROLLED_BACK)


def test_interrupted_then_resumed(log, url, tmp_path):
    build_id, crashed = snapshot_while(log, url, tmp_path, "vifs")
    eventlog = EventLog.open(crashed)
    try:
        eventlog.transition_build(build_id, lifecycle.INTERRUPTED)
        build = history(crashed, build_id)
        diagnosis = build.diagnose(recovery_policy="auto", resume_window=600)
        assert diagnosis.kind == "interrupted" and diagnosis.step == "vifs"
        assert diagnosis.text.startswith("interrupted at step vifs (last event ")
        assert (
            "the agent of host cmp-1 will resume it on start ([recovery] policy auto: "
            in diagnosis.text
        )
        old = build.diagnose(
            recovery_policy="auto", resume_window=600, now=build.created_at + 3600
        ).text
        assert "will roll it back on start ([recovery] policy auto: 60m00s old" in old
        assert (
            "roll it back on start ([recovery] policy rollback)"
            in build.diagnose(recovery_policy="rollback").text
        )
        (gap,) = build.interruptions
        assert (gap.steps, gap.after, gap.during) == (["vifs"], "volumes", "RUNNING")
        assert build.step("vifs").spans[-1].outcome == "INTERRUPTED"

        eventlog.transition_build(
            build_id, lifecycle.RUNNING, payload={"reason": "[recovery] policy = resume"}
        )
        assert run_flow(eventlog, build_id, [Step(n) for n in STEPS]) == "ACTIVE"
    finally:
        eventlog.close()
    build = history(crashed, build_id)
    vifs = build.step("vifs")
    assert [s.outcome for s in vifs.spans] == ["INTERRUPTED", "SUCCESS"]
    assert vifs.attempts == 2 and vifs.state == "SUCCESS"
    assert build.step("volumes").attempts == 1
    (gap,) = build.interruptions
    assert (gap.resumed_as, gap.reason) == ("RUNNING", "[recovery] policy = resume")
    assert gap.last_seen <= gap.at <= gap.resumed_at
    assert [t.to_state for t in build.lifecycle] == [
        "QUEUED",
        "RUNNING",
        "INTERRUPTED",
        "RUNNING",
        "ACTIVE",
    ]
    assert "resumed after 1 interruption (first at step vifs)" in build.diagnose().text


def test_interrupted_then_rolled_back_by_recovery(log, url, tmp_path):
    build_id, crashed = snapshot_while(log, url, tmp_path, "firewall")
    eventlog = EventLog.open(crashed)
    try:
        eventlog.transition_build(build_id, lifecycle.INTERRUPTED)
        rollback_flow(eventlog, build_id, "[recovery] policy = rollback")
    finally:
        eventlog.close()
    build = history(crashed, build_id)
    assert build.state == "ROLLED_BACK"
    text = build.diagnose().text
    assert text.startswith("interrupted at step firewall at ")
    assert "recovery ([recovery] policy = rollback) rolled back: " in text
    assert build.reverted_steps[:3] == ["disk_info", "image", "volumes"]


def test_leftovers_know_every_step_that_makes_something():
    """history cannot import the flows; this ties its step names to theirs."""
    from spawnflow.flows.spawn import step_names
    from spawnflow.history import leftovers

    makers = {"image", "volumes", "encryptor", "vifs", "firewall", "domain_create"}
    assert set(leftovers._NAMERS) == set(leftovers._MARKERS) == makers
    assert makers <= set(step_names())
