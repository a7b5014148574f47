"""What every spawn step is: a TaskFlow task named after its step, holding the build context.

One name per step: the module (``flows/wait_for_boot.py``), the class
(``WaitForBootStep``) and the TaskFlow atom name (``wait_for_boot``, the
``step`` attribute). The atom name is persisted in the event log, so it never
changes; the others follow it.
"""

from __future__ import annotations

from typing import ClassVar

from taskflow import task

from spawnflow.flows.context import BuildContext


# TaskFlow ships no types, so Task is Any: strict mypy refuses subclassing it
# (misc), plain mypy does not (hence unused-ignore).
class SpawnTask(task.Task):  # type: ignore[misc, unused-ignore]
    """A step of the spawn flow; subclasses set ``step`` and ``default_provides``.

    The context is kept, never persisted: on resume the agent builds a new
    one from the persisted spec (see :mod:`spawnflow.flows.context`).
    """

    step: ClassVar[str]

    def __init__(self, ctx: BuildContext):
        super().__init__(name=self.step)
        self.ctx = ctx
