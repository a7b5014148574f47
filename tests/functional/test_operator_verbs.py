"""``spawnflow build retry|resolve|rollback`` as an operator runs them (issue 12).

Real builds come from the agent on libvirt's test:///default driver (in this
process); every command runs in a subprocess on the same database. A FAILED
build is made for real: the step ``resume`` is refused by libvirt, then the
domain's destroy is refused for good during the rollback (tests/faults.py's
injector, armed from the harness); lifting the fault and retrying finishes
the rollback.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from spawnflow import Agent
from spawnflow.engine.queue import queue_build
from spawnflow.flows.spec import parse_spec
from tests.faults import LIBVIRT, PERMANENT, REVERT, Fault, Site
from tests.functional.test_history_cli import cli, destroy, diagnosis_text, ok, refused
from tests.helpers import leaks, make_spec

RESUME_REFUSED = Fault(Site(LIBVIRT, "lookupByUUIDString", "wait_for_boot", "execute"), PERMANENT)
DESTROY_REFUSED = Fault(Site(LIBVIRT, "domain.destroy", "domain_create", REVERT), PERMANENT)


@pytest.fixture
def failing_agent(conf, injector) -> Iterator[Agent]:
    """An agent whose builds fail at resume, and whose rollback then fails at domain_create."""

    def progress(build_id: str, step: str, state: str, elapsed: float) -> None:
        if state == "REVERTING" and injector.fault is RESUME_REFUSED:
            injector.arm(DESTROY_REFUSED)  # the rollback breaks for good
        injector.progress(build_id, step, state, elapsed)

    with Agent(conf, progress=progress) as running:
        yield running


@pytest.fixture
def failed(failing_agent, injector, image, test_conn, tmp_path):
    """A FAILED build whose domain was left on the host."""
    spec = make_spec(image)
    injector.arm(RESUME_REFUSED)
    build_id = failing_agent.start_build(spec)
    outcome = failing_agent.wait(build_id, timeout=60)
    assert outcome.state == "FAILED", outcome
    uuid = spec["instance"]["uuid"]
    path = Path(failing_agent.instances_path)
    assert leaks(test_conn, uuid, path), "the failed rollback left nothing: no test"
    yield {"conf": tmp_path / "spawnflow.conf", "id": build_id, "uuid": uuid, "path": path}
    destroy(test_conn, uuid)


def test_retry_after_the_cause_is_fixed_rolls_the_build_back(
    failed, failing_agent, injector, test_conn
):
    conf, build_id = failed["conf"], failed["id"]
    injector.disarm()  # the operator fixed the cause
    out = ok(cli(conf, "build", "retry", build_id, "--note", "libvirtd restarted"))
    assert f"retry of build {build_id}" in out
    assert failing_agent.pick_up_requests() == [build_id]  # the agent loop's call
    assert failing_agent.wait(build_id, timeout=60).state == "ROLLED_BACK"
    assert leaks(test_conn, failed["uuid"], failed["path"]) == []
    assert failing_agent.pick_up_requests() == []  # the request is spent

    show = ok(cli(conf, "history", "show", build_id, "--diagnose"))
    assert "FAILED -> REVERTING -> ROLLED_BACK" in show
    text = diagnosis_text(show)
    assert "rollback retried by" in text and "libvirtd restarted" in text, text
    # Another retry is refused: the build is no longer FAILED.
    refused(cli(conf, "build", "retry", build_id), "ROLLED_BACK", "only a FAILED build")


def test_a_retry_that_fails_again_ends_failed_and_can_be_retried(
    failed, failing_agent, injector, test_conn
):
    conf, build_id = failed["conf"], failed["id"]
    ok(cli(conf, "build", "retry", build_id))  # the fault is still there
    assert failing_agent.pick_up_requests() == [build_id]
    assert failing_agent.wait(build_id, timeout=60).state == "FAILED"
    assert leaks(test_conn, failed["uuid"], failed["path"])
    injector.disarm()
    failing_agent.retry_build(build_id, note="second try")  # the library call
    assert failing_agent.wait(build_id, timeout=60).state == "ROLLED_BACK"
    assert leaks(test_conn, failed["uuid"], failed["path"]) == []


def test_resolve_takes_a_failed_build_off_the_failed_list(failed):
    conf, build_id = failed["conf"], failed["id"]
    refused(cli(conf, "build", "resolve", build_id), "--note")
    refused(cli(conf, "build", "resolve", build_id, "--note", "  "), "a note is required")
    out = ok(cli(conf, "build", "resolve", build_id, "--note", "removed the domain by hand"))
    assert f"build {build_id} is RESOLVED" in out
    failed_list = ok(
        cli(conf, "history", "list", "--state", "FAILED", "-f", "value", "-c", "Build")
    )
    assert build_id not in failed_list
    assert build_id[:8] in ok(cli(conf, "history", "list", "--state", "RESOLVED"))
    text = diagnosis_text(ok(cli(conf, "history", "show", build_id, "--diagnose")))
    assert "resolved by" in text and "removed the domain by hand" in text, text
    assert "rollback failed at step domain_create" in text, text  # the history is kept
    for verb in ("retry", "resolve", "rollback"):
        refused(cli(conf, "build", verb, build_id, "--note", "x"), "RESOLVED")


def test_refusals_are_one_clear_line(agent, image, tmp_path):
    conf = tmp_path / "spawnflow.conf"
    build_id = agent.start_build(make_spec(image))
    assert agent.wait(build_id, timeout=60).state == "ACTIVE"
    refused(cli(conf, "build", "retry", build_id), "ACTIVE", "only a FAILED build can be retried")
    refused(cli(conf, "build", "resolve", build_id, "--note", "x"), "only a FAILED build")
    refused(cli(conf, "build", "rollback", build_id), "already ACTIVE", "nothing to roll back")
    refused(cli(conf, "build", "retry", "no-such-build"), "no build no-such-build")


def test_rollback_rolls_back_an_interrupted_build_the_agent_holds(agent, conf, image, tmp_path):
    """A build left INTERRUPTED with no thread running it (held) is rolled back on request."""
    # Staged as a held build: queued behind the agent's back, marked interrupted.
    held_id, _ = queue_build(agent.eventlog, agent.backend, parse_spec(make_spec(image)), conf.host)
    agent.eventlog.transition_build(held_id, "RUNNING")
    agent.eventlog.transition_build(held_id, "INTERRUPTED", payload={"reason": "staged"})
    assert agent.pick_up_requests() == []  # nothing asked yet: it stays held
    out = ok(cli(tmp_path / "spawnflow.conf", "build", "rollback", held_id, "--note", "n"))
    assert "rollback of build" in out and "(INTERRUPTED)" in out
    assert agent.pick_up_requests() == [held_id]
    assert agent.wait(held_id, timeout=60).state == "ROLLED_BACK"
    assert agent.pick_up_requests() == []


def test_a_retry_waits_for_the_instances_other_unfinished_build(failed, failing_agent, injector):
    """A retry makes its build unfinished again; the database allows one per instance."""
    from spawnflow.engine.queue import queue_build

    conf, build_id = failed["conf"], failed["id"]
    injector.disarm()
    # The request is taken first; then the instance is started again (allowed after FAILED).
    ok(cli(conf, "build", "retry", build_id, "--note", "first"))
    log = failing_agent.eventlog
    spec = parse_spec(log.get_build(build_id).spec)
    other, created = queue_build(log, failing_agent.backend, spec, failing_agent.conf.host)
    assert created
    # The agent's loop goes on: the retry is refused once, said in its log, not raised.
    assert failing_agent.pick_up_requests() == []
    assert failing_agent.pick_up_requests() == []
    assert log.get_build(build_id).state == "FAILED"
    # And a new request is refused at once, naming the other build.
    refused(cli(conf, "build", "retry", build_id), "unfinished", other)
