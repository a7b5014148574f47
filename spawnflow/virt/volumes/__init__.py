"""Volume connectors, loaded as plugins by driver name.

Connectors are registered under the entry point group
``spawnflow.volume_connectors`` (``local``, ``iscsi``, ``rbd``), so a deployment
can add its own without changing spawnflow.
"""

from __future__ import annotations

from typing import Any

from stevedore.driver import DriverManager
from stevedore.exception import NoMatches

from spawnflow.exceptions import VolumeError
from spawnflow.virt.volumes.base import Connection, VolumeConnector, VolumePolicy, VolumeSpec

__all__ = [
    "Connection",
    "VolumeConnector",
    "VolumePolicy",
    "VolumeSpec",
    "get_connector",
    "VOLUME_CONNECTOR_NAMESPACE",
]

VOLUME_CONNECTOR_NAMESPACE = "spawnflow.volume_connectors"


def get_connector(driver: str, policy: VolumePolicy | None = None) -> VolumeConnector:
    """The connector for volume ``driver``, from the ``spawnflow.volume_connectors`` plugins.

    ``policy`` (the operator's allow lists) is handed to the connector's
    constructor; without it the connector can describe a recorded connection
    but connects nothing that needs one (a local path).
    """

    def _load_failed(_manager: Any, entry_point: Any, exc: Exception) -> None:
        # stevedore would log and skip a plugin that fails to import, and we
        # would then report "unknown driver", hiding the real cause.
        raise VolumeError(
            f"volume connector plugin {entry_point.name!r} failed to load: {exc}"
        ) from exc

    try:
        manager = DriverManager(
            namespace=VOLUME_CONNECTOR_NAMESPACE,
            name=driver,
            invoke_on_load=True,
            # Only when given: a third-party connector may take no arguments.
            invoke_kwds={"policy": policy} if policy is not None else {},
            on_load_failure_callback=_load_failed,
        )
    except NoMatches as exc:
        raise VolumeError(
            f"unknown volume driver {driver!r}: no {VOLUME_CONNECTOR_NAMESPACE} plugin of that name"
        ) from exc
    return manager.driver
