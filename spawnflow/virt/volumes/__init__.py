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
from spawnflow.virt.volumes.base import Connection, VolumeConnector, VolumeSpec

__all__ = ["Connection", "VolumeConnector", "VolumeSpec", "get_connector",
           "VOLUME_CONNECTOR_NAMESPACE"]

VOLUME_CONNECTOR_NAMESPACE = "spawnflow.volume_connectors"


def get_connector(driver: str) -> VolumeConnector:
    """The connector for volume ``driver``, from the ``spawnflow.volume_connectors`` plugins."""

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
            on_load_failure_callback=_load_failed,
        )
    except NoMatches as exc:
        raise VolumeError(
            f"unknown volume driver {driver!r}: no {VOLUME_CONNECTOR_NAMESPACE} plugin "
            "of that name"
        ) from exc
    return manager.driver
