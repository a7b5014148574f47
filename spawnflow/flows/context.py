"""What every spawn task is given: the build, its spec and the host services.

Tasks keep this object, never persist it; on resume the agent builds a new one
from the persisted (redacted) spec and the same configuration.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from oslo_config import cfg

from spawnflow.flows.spec import BuildSpec
from spawnflow.virt.firewall import FirewallDriver
from spawnflow.virt.host import Host
from spawnflow.virt.images import ImageCache


class EventWaiter(Protocol):
    def wait(self, build_id: str, tags: list[str], deadline: float) -> dict[str, str]:
        """Block until every tag has an event or ``deadline`` (epoch) passes.

        Returns ``{tag: status}`` for the events received (persisted ones included).
        """

    def checkpoint(self, build_id: str) -> None:
        """Raise if a waiting step must stop (agent stopping, or build cancelled)."""


@dataclass
class BuildContext:
    build_id: str
    spec: BuildSpec
    conf: cfg.ConfigOpts
    host: Host
    images: ImageCache
    firewall: FirewallDriver
    events: EventWaiter
    instances_path: str
    # The runner's Control, for steps that block outside the event waiter (an
    # image fetch polls them to stop within a second). Default: never.
    cancelled: Callable[[], bool] = field(default=lambda: False)
    stopping: Callable[[], bool] = field(default=lambda: False)
    # Raises (Fenced) unless this agent may still touch the host: called before
    # each side effect, so an agent woken from SIGSTOP after another took its
    # host over touches nothing (see engine.ownership.HostLease.check).
    guard: Callable[[], None] = field(default=lambda: None)

    def should_stop(self) -> bool:
        """Whether a long step must give up now (build cancelled or agent stopping)."""
        return self.cancelled() or self.stopping()

    @property
    def instance_uuid(self) -> str:
        return self.spec.instance.uuid

    @property
    def instance_dir(self) -> str:
        return os.path.join(self.instances_path, self.spec.instance.uuid)
