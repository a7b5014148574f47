"""Shared by the history tests: a SQLite event log and builds written into it.

``run_build`` plays the agent's runner with plain TaskFlow tasks (no libvirt):
the log holds exactly the events a real build writes, so the history read API,
diagnosis, export, purge and timeline are checked on the real shapes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import taskflow.engines
from taskflow import states as tf_states
from taskflow import task
from taskflow.patterns import linear_flow
from taskflow.persistence import models

from spawnflow.exceptions import FirewallError, ImageChecksumMismatch
from spawnflow.persistence import lifecycle
from spawnflow.persistence.backend import EventLogBackend
from spawnflow.persistence.eventlog import EventLog

STEPS = ["disk_info", "image", "volumes", "vifs", "firewall", "resume"]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/log.sqlite"


@pytest.fixture
def log(url: str) -> Iterator[EventLog]:
    eventlog = EventLog.open(url)
    yield eventlog
    eventlog.close()


class Step(task.Task):
    """A step that returns ``result``, or fails, or fails its revert; ``hook`` runs inside."""

    def __init__(
        self,
        name: str,
        *,
        fail: bool = False,
        revert_fail: bool = False,
        result: Any = None,
        hook: Callable[[], None] | None = None,
    ):
        super().__init__(name=name)
        self.fail, self.revert_fail, self.result, self.hook = fail, revert_fail, result, hook

    def execute(self) -> Any:
        if self.hook is not None:
            self.hook()
        if self.fail:
            raise ImageChecksumMismatch(f"{self.name}: sha256 abc does not match def")
        return self.result if self.result is not None else {"step": self.name}

    def revert(self, *args: Any, **kwargs: Any) -> None:
        if self.revert_fail:
            raise FirewallError(f"cannot undefine filter of {self.name}")


def new_build(
    log: EventLog, *, host: str = "cmp-1", instance: str | None = None, name: str | None = None
) -> str:
    """Record a QUEUED build with its (empty) logbook, as the agent does."""
    build_id = str(uuid.uuid4())
    instance = instance or str(uuid.uuid4())
    log.create_build(
        build_id,
        instance_uuid=instance,
        instance_name=name or f"vm-{instance[:4]}",
        host=host,
        spec={
            "instance": {"uuid": instance, "name": name or "vm"},
            "flavor": {"vcpus": 1, "memory_mb": 64},
        },
    )
    book = models.LogBook(f"build-{build_id}", uuid=build_id)
    book.add(models.FlowDetail("spawn", uuid=str(uuid.uuid4())))
    EventLogBackend(eventlog=log).get_connection().save_logbook(book)
    return build_id


def run_flow(log: EventLog, build_id: str, tasks: list[task.Task]) -> str:
    """Run the flow of ``build_id`` like the agent's runner; return the final state."""
    backend = EventLogBackend(eventlog=log)
    book = backend.get_connection().get_logbook(build_id)
    flow_detail = next(iter(book))
    engine = taskflow.engines.load(
        linear_flow.Flow("spawn").add(*tasks),
        flow_detail=flow_detail,
        book=book,
        backend=backend,
        engine="serial",
    )

    def to(state: str, **kwargs: Any) -> None:
        if log.get_build(build_id).state != state:
            log.transition_build(build_id, state, **kwargs)

    engine.notifier.register(tf_states.REVERTING, lambda *_: to(lifecycle.REVERTING))
    to(lifecycle.RUNNING)
    try:
        engine.run()
    except Exception as exc:
        names = getattr(exc, "exception_type_names", None) or [type(exc).__name__]
        final = (
            lifecycle.ROLLED_BACK
            if engine.storage.get_flow_state() == tf_states.REVERTED
            else lifecycle.FAILED
        )
        to(lifecycle.REVERTING)
        to(final, error=f"{names[0].rsplit('.', 1)[-1]}: {getattr(exc, 'exception_str', exc)}")
        return final
    to(lifecycle.ACTIVE)
    return lifecycle.ACTIVE


def run_build(
    log: EventLog,
    *,
    fail_at: str | None = None,
    revert_fail_at: str | None = None,
    steps: list[str] = STEPS,
    results: dict[str, Any] | None = None,
    hooks: dict[str, Callable[[], None]] | None = None,
    **build: Any,
) -> str:
    build_id = new_build(log, **build)
    run_flow(
        log,
        build_id,
        [
            Step(
                n,
                fail=n == fail_at,
                revert_fail=n == revert_fail_at,
                result=(results or {}).get(n),
                hook=(hooks or {}).get(n),
            )
            for n in steps
        ],
    )
    return build_id


def backdate(url: str, build_id: str, created_at: float, took: float = 10) -> None:
    """Pretend the build was created at ``created_at`` and last changed ``took`` s later."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "update builds set created_at = :c, updated_at = :c + :took where build_id = :b"
            ),
            {"c": created_at, "took": took, "b": build_id},
        )
    engine.dispose()
