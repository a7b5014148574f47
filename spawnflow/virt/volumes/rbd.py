"""``rbd`` volumes: Ceph RBD images opened by qemu's librbd driver.

The guest disk is a libvirt network disk (``protocol='rbd'``, name
``pool/image``, one host per monitor). qemu connects to the cluster itself;
nothing is mapped on the host (no krbd /dev/rbdN), so disconnect has nothing to
undo. cephx credentials live in a libvirt secret of type 'ceph' that someone
else creates; we only reference it by uuid. With no monitor hosts given,
librbd falls back to the host's ceph.conf.
"""

from __future__ import annotations

from spawnflow.exceptions import VolumeError
from spawnflow.virt.volumes.base import (
    Connection,
    VolumeConnector,
    VolumeSpec,
    check_auth,
    parse_host_port,
    require,
)

DEFAULT_PORT = 6789


class RbdConnector(VolumeConnector):
    """A Ceph RBD image reached through qemu's librbd."""

    def connect(self, volume: VolumeSpec) -> Connection:
        require(volume, "pool", "image")
        check_auth(volume)
        # '/' would make libvirt read a namespace, '@' a snapshot.
        for name in ("pool", "image"):
            value = getattr(volume, name)
            if "/" in value or "@" in value:
                raise VolumeError(
                    f"volume {volume.id}: {name} {value!r} must not contain '/' or '@'"
                )
        hosts: list[tuple[str, int | None]] = [
            parse_host_port(volume.id, "hosts", h, DEFAULT_PORT) for h in volume.hosts
        ]
        return Connection(
            volume_id=volume.id,
            driver=volume.driver,
            source_type="network",
            path=None,
            protocol="rbd",
            name=f"{volume.pool}/{volume.image}",
            hosts=hosts,
            driver_format="raw",
            auth_username=volume.auth_username,
            auth_secret_type="ceph" if volume.auth_username else None,
            auth_secret_uuid=volume.auth_secret_uuid,
        )

    def disconnect(self, volume: VolumeSpec, connection: Connection | None) -> None:
        # librbd's connection belongs to the qemu process and ends with it.
        return None
