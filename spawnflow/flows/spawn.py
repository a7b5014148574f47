"""The spawn flow: ten revertible steps in the order of doc/source/architecture.rst, chained."""

from __future__ import annotations

from collections.abc import Sequence

from taskflow.patterns import linear_flow

from spawnflow.flows.base import SpawnTask, flow_digest
from spawnflow.flows.context import BuildContext
from spawnflow.flows.disk_info import DiskInfoStep
from spawnflow.flows.domain_create import DomainCreateStep
from spawnflow.flows.domain_xml import DomainXmlStep
from spawnflow.flows.encryptor import EncryptorStep
from spawnflow.flows.firewall import FirewallStep
from spawnflow.flows.image import ImageStep
from spawnflow.flows.resume import ResumeStep
from spawnflow.flows.vifs import VifsStep
from spawnflow.flows.volumes import VolumesStep
from spawnflow.flows.wait_for_boot import WaitForBootStep

FLOW_NAME = "spawn"
TASKS: tuple[type[SpawnTask], ...] = (
    DiskInfoStep,
    ImageStep,
    VolumesStep,
    EncryptorStep,
    DomainXmlStep,
    VifsStep,
    FirewallStep,
    DomainCreateStep,
    ResumeStep,
    WaitForBootStep,
)


def step_names() -> list[str]:
    """Task names in flow order (for history displays)."""
    return [task_cls.step for task_cls in TASKS]


def flow_version(tasks: Sequence[type[SpawnTask]] = TASKS) -> str:
    """The version of the spawn flow: a digest of its step names, order and versions.

    Recorded with every build when it is queued; recovery resumes a build only
    with the flow version it started with (``persistence.recovery_rules``).
    """
    return flow_digest(FLOW_NAME, tasks)


def build_spawn_flow(ctx: BuildContext) -> linear_flow.Flow:
    """The spawn flow of one build, its steps holding ``ctx``."""
    return linear_flow.Flow(FLOW_NAME).add(*(task_cls(ctx) for task_cls in TASKS))
