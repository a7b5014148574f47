"""The delete flow: an instance torn down in nova's order, eight forward-only steps.

    cancel_builds -> power_off -> unplug_vifs -> remove_filters ->
    disconnect_volumes -> remove_files -> undefine_secrets -> undefine_domain

Run as a build of kind ``delete`` (``persistence.lifecycle``), persisted to
the same event log as a spawn, step by step. Every step is idempotent, so
recovery always resumes a delete (re-running the step a crash interrupted)
and never rolls it back; see :mod:`spawnflow.flows.teardown.base`.
"""

from __future__ import annotations

from taskflow.patterns import linear_flow

from spawnflow.flows.base import flow_digest
from spawnflow.flows.teardown.base import TeardownStep
from spawnflow.flows.teardown.cancel_builds import CancelBuildsStep
from spawnflow.flows.teardown.context import DeleteContext, Owner
from spawnflow.flows.teardown.disconnect_volumes import DisconnectVolumesStep
from spawnflow.flows.teardown.power_off import PowerOffStep
from spawnflow.flows.teardown.remove_files import RemoveFilesStep
from spawnflow.flows.teardown.remove_filters import RemoveFiltersStep
from spawnflow.flows.teardown.undefine_domain import UndefineDomainStep
from spawnflow.flows.teardown.undefine_secrets import UndefineSecretsStep
from spawnflow.flows.teardown.unplug_vifs import UnplugVifsStep

FLOW_NAME = "delete"
TASKS: tuple[type[TeardownStep], ...] = (
    CancelBuildsStep,
    PowerOffStep,
    UnplugVifsStep,
    RemoveFiltersStep,
    DisconnectVolumesStep,
    RemoveFilesStep,
    UndefineSecretsStep,
    UndefineDomainStep,
)


def step_names() -> list[str]:
    """Step names in flow order (for history displays)."""
    return [task_cls.step for task_cls in TASKS]


def flow_version() -> str:
    """The delete flow's version: a digest of its step names, order and versions.

    Recorded with every delete build. A delete is resumed whatever version
    it started with (its steps are idempotent); one whose flow changed is
    run again from its first step instead of from where it stopped.
    """
    return flow_digest(FLOW_NAME, TASKS)


def build_delete_flow(ctx: DeleteContext) -> linear_flow.Flow:
    """The delete flow of one delete build, its steps holding ``ctx``."""
    return linear_flow.Flow(FLOW_NAME).add(*(task_cls(ctx) for task_cls in TASKS))


__all__ = ["FLOW_NAME", "TASKS", "DeleteContext", "Owner", "build_delete_flow", "flow_version"]
