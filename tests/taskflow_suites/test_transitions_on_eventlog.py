"""What the log records for the transitions TaskFlow's tables do not list.

``engine.reset()`` is recorded as a reset (not a run), a state forced through
``Storage`` only inside ``transitions.overrides`` and then as an override,
anything else is still refused; an import accepts what the backend writes
and refuses the same events with their marks removed or forged.
"""

from __future__ import annotations

import copy
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import taskflow.engines
from taskflow import states as st
from taskflow import task
from taskflow.patterns import linear_flow

from spawnflow.exceptions import IllegalTransition
from spawnflow.history import History, InvalidExport, export, import_document
from spawnflow.persistence import lifecycle, replay, transitions
from spawnflow.persistence.backend import EventLogBackend
from spawnflow.persistence.eventlog import FLOW, EventLog
from tests.taskflow_suites.base import payloads
from tests.unit.conftest import new_build

KIND, REASON = transitions.KIND_KEY, transitions.REASON_KEY


class Step(task.Task):
    def __init__(self, name: str, *, revert_fails: bool = False, fails: bool = False):
        super().__init__(name=name)
        self.revert_fails, self.fails = revert_fails, fails

    def execute(self) -> str:
        if self.fails:
            raise RuntimeError(f"{self.name} failed")
        return self.name

    def revert(self, *args: Any, **kwargs: Any) -> None:
        if self.revert_fails:
            raise RuntimeError(f"{self.name} cannot be reverted")


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/log.sqlite"


@pytest.fixture
def log(url: str) -> Iterator[EventLog]:
    with EventLog.open(url) as eventlog:
        yield eventlog


@pytest.fixture
def backend(log: EventLog) -> EventLogBackend:
    return EventLogBackend(eventlog=log)


def engine_for(backend: EventLogBackend, build_id: str, *steps: task.Task) -> Any:
    book = backend.get_connection().get_logbook(build_id)
    return taskflow.engines.load(
        linear_flow.Flow("spawn").add(*steps),
        flow_detail=next(iter(book)),
        book=book,
        backend=backend,
        engine="serial",
    )


def marked(backend: EventLogBackend) -> list[tuple[Any, ...]]:
    """(name, from, to, kind, reason) of every atom or flow event that says what it was."""
    return [
        (name, old, new, p[KIND], p.get(REASON))
        for kind in ("atom", FLOW)
        for name, old, new, p in payloads(backend, kind)
        if KIND in p
    ]


def committed_events(url: str) -> int:
    """Events another connection sees: what was committed, not what waits in memory."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        count = conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one()
    engine.dispose()
    return int(count)


def test_engine_reset_is_recorded_as_a_reset_and_is_not_a_run(log, backend, url):
    build_id = new_build(log)
    engine = engine_for(backend, build_id, Step("disk_info"), Step("image"))
    log.transition_build(build_id, lifecycle.RUNNING)
    engine.run()
    engine.reset()  # refused before: SUCCESS -> PENDING is not in TaskFlow's table
    engine.run()
    log.transition_build(build_id, lifecycle.ACTIVE)

    assert [(n, a, b) for n, a, b, _ in payloads(backend) if n == "image" and a != b] == [
        ("image", None, st.PENDING),
        ("image", st.PENDING, st.RUNNING),
        ("image", st.RUNNING, st.SUCCESS),
        ("image", st.SUCCESS, st.PENDING),
        ("image", st.PENDING, st.RUNNING),
        ("image", st.RUNNING, st.SUCCESS),
    ]
    assert marked(backend) == [
        ("disk_info", st.SUCCESS, st.PENDING, transitions.RESET, None),
        ("image", st.SUCCESS, st.PENDING, transitions.RESET, None),
    ]
    # The flow's SUCCESS -> PENDING is in TaskFlow's table ("run it again").
    assert (st.SUCCESS, st.PENDING) in [(a, b) for _, a, b, _ in payloads(backend, FLOW)]
    assert replay.replay(log) == replay.current(log)
    with History.open(url) as history:
        step = history.build(build_id).step("image")
    # Two runs; the reset between them opened no span of its own.
    assert (step.attempts, [s.phase for s in step.spans]) == (2, ["forward", "forward"])


def test_storage_reset_after_a_failed_revert(log, backend):
    build_id = new_build(log)
    engine = engine_for(
        backend, build_id, Step("disk_info", revert_fails=True), Step("image", fails=True)
    )
    with pytest.raises(RuntimeError):
        engine.run()
    assert engine.storage.get_atom_state("disk_info") == st.REVERT_FAILURE
    # TaskFlow's engine.reset() refuses a FAILURE flow itself; Storage.reset resets one atom.
    engine.storage.reset("disk_info")
    engine.storage.reset("image")
    assert marked(backend) == [
        ("disk_info", st.REVERT_FAILURE, st.PENDING, transitions.RESET, None),
    ]  # image went REVERTED -> PENDING: TaskFlow's "try again", a plain event


def test_a_state_no_engine_sets_is_refused_unless_forced_then_recorded_as_override(
    log, backend, url
):
    build_id = new_build(log)
    engine = engine_for(backend, build_id, Step("disk_info"), Step("image"))
    engine.compile()
    engine.prepare()
    engine.storage.set_flow_state(st.PENDING)  # a new flow detail has no state yet
    log.flush(all_builds=True)
    before = committed_events(url)
    with pytest.raises(IllegalTransition, match="PENDING -> SUCCESS is not allowed"):
        engine.storage.save("disk_info", "by hand")
    with pytest.raises(IllegalTransition, match="PENDING -> REVERTED"):
        engine.storage.set_atom_state("image", st.REVERTED)
    with pytest.raises(IllegalTransition, match="'PENDING' to 'SUCCESS'"):
        engine.storage.set_flow_state(st.SUCCESS)
    log.flush(all_builds=True)
    assert committed_events(url) == before  # a refused save writes nothing

    with transitions.overrides("operator: disk_info was done by hand"):
        engine.storage.save("disk_info", "by hand")
        # Not deferred: whoever forced a state expects it kept.
        assert committed_events(url) == before + 1
        engine.storage.set_atom_state("image", st.RUNNING)  # legal: a plain event
        engine.storage.set_flow_state(st.SUCCESS)
    assert marked(backend) == [
        ("disk_info", st.PENDING, st.SUCCESS, "override", "operator: disk_info was done by hand"),
        ("spawn", st.PENDING, st.SUCCESS, "override", "operator: disk_info was done by hand"),
    ]
    assert replay.replay(log) == replay.current(log)


def test_overrides_stay_in_their_thread_and_can_be_turned_off(log, backend):
    build_id = new_build(log)
    engine = engine_for(backend, build_id, Step("disk_info"), Step("image"))
    engine.compile()
    engine.prepare()
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            engine.storage.save("image", "forced elsewhere")
        except IllegalTransition as exc:
            errors.append(exc)

    with transitions.overrides("repair"):
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
        with transitions.overrides(None), pytest.raises(IllegalTransition):
            engine.storage.save("disk_info", "forced")
        engine.storage.save("disk_info", "forced")  # the outer scope again
    assert len(errors) == 1
    with pytest.raises(IllegalTransition):
        engine.storage.save("image", "forced after")
    assert [(n, k) for n, _, _, k, _ in marked(backend)] == [("disk_info", "override")]
    for bad in ("", "x" * 256):
        with pytest.raises(ValueError, match="1 to 255"), transitions.overrides(bad):
            pass


def test_rules_beyond_taskflows_tables():
    rule = transitions.atom_kind
    assert rule("TASK_DETAIL", st.SUCCESS, st.PENDING) == transitions.RESET
    assert rule("TASK_DETAIL", st.RUNNING, st.PENDING) == transitions.RESET
    assert rule("RETRY_DETAIL", st.RETRYING, st.PENDING) == transitions.RESET
    assert rule("TASK_DETAIL", st.SUCCESS, st.IGNORE) == transitions.RESET
    assert rule("TASK_DETAIL", st.REVERTED, st.PENDING) is None  # TaskFlow's "try again"
    assert rule("TASK_DETAIL", st.PENDING, st.IGNORE) is None
    assert rule("TASK_DETAIL", st.RUNNING, st.REVERTING) is None  # recovery
    assert rule("TASK_DETAIL", st.PENDING, st.REVERTING) is None  # bug 2043808's race
    for old, new in [
        (st.PENDING, st.SUCCESS),
        (st.PENDING, st.FAILURE),
        (st.PENDING, st.REVERTED),
        (st.SUCCESS, st.RUNNING),
        (st.REVERTED, st.SUCCESS),
        (st.REVERT_FAILURE, st.REVERTING),
    ]:
        with pytest.raises(IllegalTransition):
            rule("TASK_DETAIL", old, new)
    with pytest.raises(IllegalTransition):
        rule("RETRY_DETAIL", st.PENDING, st.RETRYING)


# -- import: what the backend wrote is accepted, the same events forged are not -------


def reset_build(url: str) -> str:
    """A finished build whose steps were reset once and one of them forced (an override)."""
    with EventLog.open(url) as log:
        backend = EventLogBackend(eventlog=log)
        build_id = new_build(log)
        engine = engine_for(backend, build_id, Step("disk_info"), Step("image"))
        log.transition_build(build_id, lifecycle.RUNNING)
        engine.run()
        engine.reset()
        with transitions.overrides("operator: image was done by hand"):
            engine.storage.save("image", "by hand")
        engine.run()
        log.transition_build(build_id, lifecycle.ACTIVE)
        log.flush(all_builds=True)
    return build_id


def exported(url: str, build_id: str) -> dict[str, Any]:
    with History.open(url) as history:
        return json.loads(export.dumps(history.export(build_id)))


def event(doc: dict[str, Any], name: str, old: str, new: str) -> dict[str, Any]:
    return next(
        e
        for e in doc["events"]
        if e["kind"] == "atom" and (e["name"], e["from_state"], e["to_state"]) == (name, old, new)
    )


def test_an_import_keeps_resets_and_overrides(tmp_path):
    source = f"sqlite:///{tmp_path}/source.sqlite"
    build_id = reset_build(source)
    doc = exported(source, build_id)
    assert event(doc, "image", st.SUCCESS, st.PENDING)["payload"][KIND] == transitions.RESET
    assert event(doc, "image", st.PENDING, st.SUCCESS)["payload"][KIND] == transitions.OVERRIDE
    target = f"sqlite:///{tmp_path}/target.sqlite"
    assert import_document(target, doc) == build_id
    with History.open(target) as history:
        assert history.build(build_id).step("image").attempts == 2


def _unmark(p: dict[str, Any]) -> None:
    del p[KIND]


def _unmark_override(p: dict[str, Any]) -> None:
    del p[KIND], p[REASON]


def _as_reset(p: dict[str, Any]) -> None:
    del p[REASON]
    p[KIND] = transitions.RESET


@pytest.mark.parametrize(
    ("where", "forge", "refusal"),
    [
        ("reset", _unmark, "recorded as a run, but it is reset"),
        ("override", _unmark_override, "atom transition PENDING -> SUCCESS is not allowed"),
        ("override", lambda p: p.pop(REASON), "an override must say why"),
        ("override", lambda p: p.update({REASON: 7}), "an override must say why"),
        ("override", _as_reset, "PENDING -> SUCCESS is not allowed"),
        ("run", lambda p: p.update({KIND: "reset"}), "recorded as reset, but it is a run"),
        (
            "run",
            lambda p: p.update({KIND: "override", REASON: "x"}),
            "recorded as an override, but an engine makes this transition",
        ),
        ("reset", lambda p: p.update({REASON: "x"}), "only an override carries a reason"),
    ],
    ids=[
        "reset-unmarked",
        "override-unmarked",
        "override-without-reason",
        "override-reason-not-text",
        "override-as-reset",
        "run-as-reset",
        "run-as-override",
        "reset-with-reason",
    ],
)
def test_an_import_refuses_forged_marks(tmp_path, where, forge, refusal):
    source = f"sqlite:///{tmp_path}/source.sqlite"
    build_id = reset_build(source)
    doc = copy.deepcopy(exported(source, build_id))
    states = {
        "reset": (st.SUCCESS, st.PENDING),
        "override": (st.PENDING, st.SUCCESS),
        "run": (st.PENDING, st.RUNNING),
    }[where]
    forge(event(doc, "image", *states)["payload"])
    with pytest.raises(InvalidExport, match=refusal):
        import_document(f"sqlite:///{tmp_path}/target.sqlite", doc)
    assert not (tmp_path / "target.sqlite").exists()  # refused before anything is opened


def test_logbooks_made_by_taskflow_carry_their_own_uuid_as_build_id(log, backend):
    """TaskFlow's tests make their own logbooks (no build row): events carry the book's uuid."""
    engine = taskflow.engines.load(
        linear_flow.Flow("f").add(Step("a")), backend=backend, engine="serial"
    )
    engine.run()
    engine.reset()
    log.flush(all_builds=True)
    [book] = backend.get_connection().get_logbooks()
    with log.engine.connect() as conn:
        ids = set(conn.execute(sa.text("SELECT DISTINCT build_id FROM events")).scalars())
    assert ids == {book.uuid}
    assert uuid.UUID(book.uuid)
    assert replay.replay(log) == replay.current(log)
