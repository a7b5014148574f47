"""What every delete step is: a TaskFlow task that removes, never reverts.

A delete is only ever driven forward: a step's ``revert`` does nothing (so a
failed delete ends FAILED with everything it did standing), and recovery
resumes an interrupted delete instead of rolling it back. Each removal is
idempotent and tolerates "already gone", so a step re-run after a crash
just finds less to do. A step tries every removal it has, each up to three
times (as a revert does), and only then fails, naming each thing it could
not remove; what is not the instance's own (no owner's marker) is left and
listed, never removed.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from spawnflow.exceptions import (
    AgentStopping,
    DeleteIncomplete,
    HostCallInterrupted,
    HostError,
    LibvirtUnreachable,
)
from spawnflow.flows.base import REVERT_RETRY_DELAYS, FlowStep
from spawnflow.flows.teardown.context import DeleteContext

LOG = logging.getLogger(__name__)


class Removals:
    """What one step removed, left (not the instance's own) and could not remove."""

    def __init__(self, ctx: DeleteContext, step: str) -> None:
        self.ctx, self.step = ctx, step
        self.removed: list[str] = []
        self.left: list[str] = []
        self.failed: list[str] = []

    def attempt(self, what: str, remove: Callable[[], bool | None]) -> None:
        """Run ``remove`` (True: something was removed) with retries; record the outcome."""
        for delay in (*REVERT_RETRY_DELAYS, None):
            self.ctx.guard()
            try:
                if remove():
                    self.removed.append(what)
                return
            except (HostCallInterrupted, LibvirtUnreachable):
                # Stopping (the step stays RUNNING and re-runs on the next
                # start), or libvirtd stayed away past [libvirt]
                # reconnect_timeout (the delete fails; build retry runs it again).
                raise
            except (HostError, OSError) as exc:
                if self.ctx.stopping():
                    raise AgentStopping(f"agent stopping while deleting ({self.step})") from exc
                if delay is None:
                    self.failed.append(f"{what} ({exc})")
                    return
                LOG.warning(
                    "delete %s: removing %s failed (%s); trying again", self.ctx.build_id, what, exc
                )
                time.sleep(delay)

    def leave(self, what: str) -> None:
        self.left.append(what)

    def result(self) -> dict[str, Any]:
        """The step's result; raises DeleteIncomplete naming what could not be removed."""
        if self.failed:
            raise DeleteIncomplete(f"could not remove {'; '.join(self.failed)}")
        return {"removed": self.removed, "left": self.left}


def _stoppable(execute: Callable[..., Any]) -> Callable[..., Any]:
    """``execute``, where a wait the agent's stop interrupted leaves the step RUNNING
    (AgentStopping: it re-runs on the next start) instead of failing the delete."""

    @functools.wraps(execute)  # TaskFlow reads the arguments from the signature
    def run(self: TeardownStep, *args: Any, **kwargs: Any) -> Any:
        try:
            return execute(self, *args, **kwargs)
        except HostCallInterrupted as exc:
            if not self.ctx.stopping():
                raise
            raise AgentStopping(f"agent stopping while deleting ({self.step})") from exc

    return run


class TeardownStep(FlowStep):
    """A step of the delete flow, holding the delete's :class:`DeleteContext`."""

    ctx: DeleteContext

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "execute" in cls.__dict__:
            cls.execute = _stoppable(cls.__dict__["execute"])

    def __init__(self, ctx: DeleteContext):
        super().__init__(ctx)

    def removals(self) -> Removals:
        return Removals(self.ctx, self.step)

    def revert(self, *args: Any, **kwargs: Any) -> None:
        """Nothing: a delete is never rolled back (see the module docstring)."""
