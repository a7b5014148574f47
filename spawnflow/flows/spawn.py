"""The spawn flow: ten revertible tasks in the order of DESIGN.md, chained linearly."""

from __future__ import annotations

from taskflow.patterns import linear_flow

from spawnflow.flows.context import BuildContext
from spawnflow.flows.disk_info import DiskInfoTask
from spawnflow.flows.domain_create import CreateDomainTask
from spawnflow.flows.domain_xml import BuildDomainXmlTask
from spawnflow.flows.encryptor import AttachEncryptorsTask
from spawnflow.flows.firewall import SetupFirewallTask
from spawnflow.flows.image import CreateImageTask
from spawnflow.flows.resume import ResumeDomainTask
from spawnflow.flows.vifs import PlugVifsTask
from spawnflow.flows.volumes import ConnectVolumesTask
from spawnflow.flows.wait_boot import WaitForBootTask

FLOW_NAME = "spawn"
TASKS = (
    DiskInfoTask,
    CreateImageTask,
    ConnectVolumesTask,
    AttachEncryptorsTask,
    BuildDomainXmlTask,
    PlugVifsTask,
    SetupFirewallTask,
    CreateDomainTask,
    ResumeDomainTask,
    WaitForBootTask,
)


def step_names() -> list[str]:
    """Task names in flow order (for history displays)."""
    return [task_cls.step for task_cls in TASKS]


def build_spawn_flow(ctx: BuildContext) -> linear_flow.Flow:
    return linear_flow.Flow(FLOW_NAME).add(*(task_cls(ctx) for task_cls in TASKS))
