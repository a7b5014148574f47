"""What every delete step is given: the instance, the builds that made it, the host.

The delete acts as each *owner*: every spawn build of the instance on this
host. Each step removes only what carries an owner's marker (the domain's
metadata, a tap's alias, a filter's or secret's name, the instance
directory's marker), the same checks a spawn step's revert makes, so a
delete never removes what another instance, an operator or a foreign tool
made under the same names.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from oslo_config import cfg

from spawnflow.flows.spec import BuildSpec
from spawnflow.virt.firewall import FirewallDriver
from spawnflow.virt.host import Host


@dataclass(frozen=True)
class Owner:
    """A spawn build of the instance: its id (the markers name it) and persisted spec."""

    build_id: str
    spec: BuildSpec


@dataclass
class DeleteContext:
    build_id: str  # the delete build's
    instance_uuid: str
    owners: list[Owner]
    force: bool
    conf: cfg.ConfigOpts
    host: Host
    firewall: FirewallDriver
    instances_path: str
    # Cancels and rolls back the instance's unfinished spawn builds, waiting
    # until none is left; returns their ids (the agent's, see DeleteVerbs).
    settle: Callable[[], list[str]] = field(default=lambda: [])
    stopping: Callable[[], bool] = field(default=lambda: False)
    # Raises (Fenced) unless this agent may still touch the host (as BuildContext).
    guard: Callable[[], None] = field(default=lambda: None)

    @property
    def instance_dir(self) -> str:
        return os.path.join(self.instances_path, self.instance_uuid)

    @property
    def owner_ids(self) -> frozenset[str]:
        return frozenset(owner.build_id for owner in self.owners)
