"""Replay: projections rebuilt from events alone equal the stored ones.

Hypothesis drives random sequences of legal TaskFlow storage operations
(through ``taskflow.storage.Storage`` on our backend) and whole engine runs
with random failing steps.
"""

from __future__ import annotations

import contextlib
import tempfile

import taskflow.engines
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from taskflow import states, storage, task
from taskflow.patterns import linear_flow
from taskflow.persistence import models
from taskflow.types import failure

from spawnflow.persistence import open_backend, replay

# Legal task transitions (TaskFlow's own table) as a walk from PENDING.
NEXT = {
    states.PENDING: [states.RUNNING, states.IGNORE],
    states.RUNNING: [states.SUCCESS, states.FAILURE],
    states.SUCCESS: [states.REVERTING],
    states.FAILURE: [states.REVERTING],
    states.REVERTING: [states.REVERTED, states.REVERT_FAILURE],
    states.REVERTED: [states.PENDING],
    states.IGNORE: [states.PENDING],
    states.REVERT_FAILURE: [],
}

op = st.one_of(
    st.tuples(st.just("state"), st.integers(0, 4), st.integers(0, 1)),
    st.tuples(st.just("result"), st.integers(0, 4), st.integers(-5, 5)),
    st.tuples(
        st.just("intention"),
        st.integers(0, 4),
        st.sampled_from([states.EXECUTE, states.REVERT, states.IGNORE]),
    ),
    st.tuples(st.just("progress"), st.integers(0, 4), st.floats(0, 1)),
    st.tuples(st.just("flow_meta"), st.integers(0, 4), st.text(max_size=5)),
    st.tuples(st.just("fail"), st.integers(0, 4), st.text(max_size=8)),
)


class Noop(task.Task):
    def execute(self) -> int:
        return 1


def new_backend(tmp: str):
    return open_backend(f"sqlite:///{tmp}/replay.sqlite")


def assert_replay_equals_projection(backend) -> None:
    log = backend.eventlog
    log.flush(all_builds=True)
    assert replay.replay(log) == replay.current(log)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, max_size=40))
def test_random_storage_operations_replay_to_the_projections(ops):
    with tempfile.TemporaryDirectory() as tmp:
        backend = new_backend(tmp)
        book = models.LogBook("b")
        flow_detail = models.FlowDetail("f", uuid=models.uuidutils.generate_uuid())
        book.add(flow_detail)
        with contextlib.closing(backend.get_connection()) as conn:
            conn.save_logbook(book)
        store = storage.Storage(flow_detail, backend=backend)
        names = [f"t{i}" for i in range(5)]
        store.ensure_atoms([Noop(name=n) for n in names])
        for kind, index, value in ops:
            name = names[index]
            current = store.get_atom_state(name)
            if kind == "state" and NEXT[current]:
                store.set_atom_state(name, NEXT[current][value % len(NEXT[current])])
            elif kind == "result" and current == states.RUNNING:
                store.save(name, value, states.SUCCESS)
            elif kind == "fail" and current == states.RUNNING:
                store.save(
                    name, failure.Failure.from_exception(RuntimeError(value)), states.FAILURE
                )
            elif kind == "intention":
                store.set_atom_intention(name, value)
            elif kind == "progress" and current == states.RUNNING:
                store.set_task_progress(name, value)
            elif kind == "flow_meta":
                store.update_flow_metadata({"note": value})
        assert_replay_equals_projection(backend)
        backend.close()


class MaybeFail(task.Task):
    def __init__(self, name: str, fail: bool):
        super().__init__(name=name)
        self.fail = fail

    def execute(self) -> str:
        if self.fail:
            raise RuntimeError(f"{self.name} failed")
        return self.name

    def revert(self, *args, **kwargs) -> None:
        pass


@settings(max_examples=15, deadline=None)
@given(length=st.integers(1, 6), failing=st.integers(-1, 5), runs=st.integers(1, 3))
def test_engine_runs_replay_to_the_projections(length, failing, runs):
    with tempfile.TemporaryDirectory() as tmp:
        backend = new_backend(tmp)
        for _ in range(runs):
            book = models.LogBook("b")
            flow_detail = models.FlowDetail("f", uuid=models.uuidutils.generate_uuid())
            book.add(flow_detail)
            with contextlib.closing(backend.get_connection()) as conn:
                conn.save_logbook(book)
            flow = linear_flow.Flow("f").add(
                *(MaybeFail(f"t{i}", i == failing) for i in range(length))
            )
            engine = taskflow.engines.load(
                flow, flow_detail=flow_detail, book=book, backend=backend, engine="serial"
            )
            with contextlib.suppress(RuntimeError):
                engine.run()
        assert_replay_equals_projection(backend)
        rebuilt = replay.rebuild(backend.eventlog)
        assert rebuilt == replay.current(backend.eventlog)
        backend.close()


def test_builds_replay_including_errors(tmp_path):
    backend = new_backend(str(tmp_path))
    log = backend.eventlog
    log.create_build("b1", instance_uuid="i1", instance_name="n", host="h", spec={"a": 1})
    log.transition_build("b1", "RUNNING")
    log.transition_build("b1", "REVERTING")
    log.transition_build("b1", "ROLLED_BACK", error="ImageError: gone")
    assert_replay_equals_projection(backend)
    with contextlib.closing(backend.get_connection()) as conn:
        book = models.LogBook("x")
        conn.save_logbook(book)
        conn.destroy_logbook(book.uuid)
        conn.clear_all()
    assert_replay_equals_projection(backend)
    backend.close()
