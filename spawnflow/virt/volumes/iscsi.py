"""``iscsi`` volumes, attached by qemu's built-in iSCSI initiator.

The guest disk is a libvirt network disk (``protocol='iscsi'``, name
``<iqn>/<lun>``, one host: the portal). qemu logs in to the target itself when
the domain starts and logs out when it stops, so there is no host-side
session (no iscsiadm, no /dev/sdX) to create here or to tear down on
disconnect. CHAP credentials live in a libvirt secret of type 'iscsi' that
someone else creates; we only reference it by uuid.
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

DEFAULT_PORT = 3260


class IscsiConnector(VolumeConnector):
    """An iSCSI LUN reached through qemu's own initiator."""

    def connect(self, volume: VolumeSpec) -> Connection:
        require(volume, "portal", "iqn", "lun")
        check_auth(volume)
        # Set and non-empty: require() refused them otherwise.
        iqn, portal = volume.iqn or "", volume.portal or ""
        # '/' separates the IQN from the LUN in libvirt's source name.
        if "/" in iqn:
            raise VolumeError(f"volume {volume.id}: iqn {volume.iqn!r} must not contain '/'")
        lun = volume.lun
        if isinstance(lun, bool) or not isinstance(lun, int) or lun < 0:
            raise VolumeError(f"volume {volume.id}: lun {lun!r} is not a non-negative integer")
        host = parse_host_port(volume.id, "portal", portal, DEFAULT_PORT)
        return Connection(
            volume_id=volume.id,
            driver=volume.driver,
            source_type="network",
            path=None,
            protocol="iscsi",
            name=f"{volume.iqn}/{lun}",
            hosts=[host],
            driver_format="raw",
            auth_username=volume.auth_username,
            auth_secret_type="iscsi" if volume.auth_username else None,
            auth_secret_uuid=volume.auth_secret_uuid,
        )

    def disconnect(self, volume: VolumeSpec, connection: Connection | None) -> None:
        # The session belongs to the qemu process and ends with it.
        return None
