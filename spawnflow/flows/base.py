"""What every spawn step is: a TaskFlow task named after its step, holding the build context.

One name per step: the module (``flows/wait_for_boot.py``), the class
(``WaitForBootStep``) and the TaskFlow atom name (``wait_for_boot``, the
``step`` attribute). The atom name is persisted in the event log, so it never
changes; the others follow it.

Every step's ``revert`` is retried (:data:`REVERT_RETRY_DELAYS`) when it fails
on the host: a revert that fails is what ends a build FAILED with things left
behind, and a host call can fail once and work a moment later (a device
busy, a libvirt call refused while the domain's state is changing). Reverts
are idempotent and tolerate "already gone", so running one again is safe;
one that keeps failing still ends the build FAILED, a second or two later.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol

from taskflow import task

from spawnflow.exceptions import (
    AgentStopping,
    HostCallInterrupted,
    HostError,
    LibvirtUnreachable,
)
from spawnflow.flows.context import BuildContext
from spawnflow.flows.manifest import digest

LOG = logging.getLogger(__name__)

# Seconds before each further attempt of a failed revert (so 3 attempts).
REVERT_RETRY_DELAYS = (0.5, 1.0)
# Not retried: the agent is stopping, or libvirtd already stayed away for
# [libvirt] reconnect_timeout.
_FINAL = (HostCallInterrupted, LibvirtUnreachable)


def _retried(revert: Callable[..., Any]) -> Callable[..., Any]:
    """``revert``, run again after a host error (see the module docstring)."""

    @functools.wraps(revert)  # TaskFlow reads the revert's arguments from its signature
    def run(self: FlowStep, *args: Any, **kwargs: Any) -> Any:
        for delay in REVERT_RETRY_DELAYS:
            try:
                return revert(self, *args, **kwargs)
            except _FINAL:
                raise
            except (HostError, OSError) as exc:
                if self.ctx.stopping():
                    # Not a failed revert: left REVERTING for the next start.
                    raise AgentStopping(f"agent stopping while reverting {self.step}") from exc
                LOG.warning(
                    "build %s: reverting step %s failed (%s); trying again in %ss",
                    self.ctx.build_id,
                    self.step,
                    exc,
                    delay,
                )
            time.sleep(delay)
        return revert(self, *args, **kwargs)

    return run


def _guarded(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method``, run only while this agent may still touch the host (``ctx.guard``)."""

    @functools.wraps(method)  # TaskFlow reads the arguments from the signature
    def run(self: FlowStep, *args: Any, **kwargs: Any) -> Any:
        self.ctx.guard()
        return method(self, *args, **kwargs)

    return run


class StepContext(Protocol):
    """What every step's context offers the wrapping above."""

    build_id: str

    def guard(self) -> None: ...

    def stopping(self) -> bool: ...


# TaskFlow ships no types, so Task is Any: strict mypy refuses subclassing it
# (misc), plain mypy does not (hence unused-ignore).
class FlowStep(task.Task):  # type: ignore[misc, unused-ignore]
    """A step of a flow (spawn or delete); subclasses set ``step`` and ``default_provides``.

    The context is kept, never persisted: on resume the agent builds a new
    one from the persisted spec (see :mod:`spawnflow.flows.context`).

    ``step_version`` is the step's TaskFlow ``version`` (persisted with its
    atom) and part of the flow's version (``flows.spawn.flow_version``): a
    step whose execute, result or revert changes in a way an interrupted
    build must not be resumed across bumps it, and recovery then rolls such
    builds back (or holds them) instead of resuming them.
    """

    step: ClassVar[str]
    step_version: ClassVar[tuple[int, int]] = (1, 0)
    ctx: StepContext

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "execute" in cls.__dict__:
            cls.execute = _guarded(cls.__dict__["execute"])
        if "revert" in cls.__dict__:
            cls.revert = _retried(_guarded(cls.__dict__["revert"]))

    def __init__(self, ctx: StepContext):
        super().__init__(name=self.step)
        self.version = self.step_version
        self.ctx = ctx


class SpawnTask(FlowStep):
    """A step of the spawn flow, holding the build's :class:`BuildContext`."""

    ctx: BuildContext

    def __init__(self, ctx: BuildContext):
        super().__init__(ctx)


def flow_digest(flow_name: str, steps: Sequence[type[FlowStep]]) -> str:
    """A flow's version from its steps' classes (``manifest.digest`` of their names
    and versions)."""
    return digest(flow_name, [(cls.step, cls.step_version) for cls in steps])
