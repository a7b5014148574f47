"""Volume connectors, loaded as plugins by driver name.

Connectors are registered under the entry point group
``spawnflow.volume_connectors`` (``local``, ``iscsi``, ``rbd``), so a deployment
can add its own without changing spawnflow; ``VolumeConnector.load(driver)``
loads one (see :mod:`spawnflow.virt.plugins`).
"""

from __future__ import annotations

from spawnflow.virt.volumes.base import Connection, VolumeConnector, VolumePolicy, VolumeSpec

__all__ = ["Connection", "VolumeConnector", "VolumePolicy", "VolumeSpec"]
