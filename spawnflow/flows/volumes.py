"""Step 3, volumes: connect every volume through its connector plugin.

Creates whatever the connector does on the host (nothing for local files or
qemu's own iSCSI/RBD clients). Revert disconnects every volume of the spec;
connectors tolerate "not connected", so a revert after a crash is safe.
Connectors get the operator's allow lists (``volume_policy``) and check a
local path again when connecting: the spec check may have run in another
process, before a link was changed.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

from oslo_config import cfg
from sqlalchemy.engine import make_url
from taskflow import task

import spawnflow.conf
from spawnflow.flows.context import BuildContext
from spawnflow.flows.spec import Volume
from spawnflow.virt.volumes import Connection, VolumePolicy, VolumeSpec, get_connector


def volume_policy(conf: cfg.ConfigOpts) -> VolumePolicy:
    """``[volumes] allowed_paths`` plus what no volume may reach whatever it says.

    state_path and instances_path hold the event log, every instance's disk
    and the image cache; the event log may also live elsewhere ([database]
    connection), so its file and SQLite's -wal/-shm/-journal are added.
    """
    forbidden = [
        ("state_path", conf.state_path),
        ("instances_path", spawnflow.conf.instances_path(conf)),
    ]
    url = make_url(spawnflow.conf.database_url(conf))
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        db_file = os.path.abspath(url.database)
        forbidden += [
            ("the event log database", db_file + suffix)
            for suffix in ("", "-wal", "-shm", "-journal")
        ]
    return VolumePolicy(allowed_paths=tuple(conf.volumes.allowed_paths), forbidden=tuple(forbidden))


def volume_spec(volume: Volume) -> VolumeSpec:
    return VolumeSpec(
        id=volume.id,
        driver=volume.driver,
        device=volume.device,
        path=volume.path,
        portal=volume.portal,
        iqn=volume.iqn,
        lun=volume.lun,
        auth_username=volume.auth_username,
        auth_secret_uuid=volume.secret_uuid,
        pool=volume.pool,
        image=volume.image,
        hosts=list(volume.hosts),
    )


class ConnectVolumesTask(task.Task):
    step = "volumes"
    default_provides = "volumes"

    def __init__(self, ctx: BuildContext):
        super().__init__(name=self.step)
        self.ctx = ctx

    def execute(self) -> list[dict[str, Any]]:
        connections = []
        policy = volume_policy(self.ctx.conf)
        for volume in self.ctx.spec.volumes:
            connection = get_connector(volume.driver, policy).connect(volume_spec(volume))
            connections.append(asdict(connection))
        return connections

    def revert(self, result: Any = None, **kwargs: Any) -> None:
        recorded = {c["volume_id"]: c for c in result} if isinstance(result, list) else {}
        for volume in reversed(self.ctx.spec.volumes):
            connection = recorded.get(volume.id)
            get_connector(volume.driver).disconnect(
                volume_spec(volume), Connection.from_dict(connection) if connection else None
            )
