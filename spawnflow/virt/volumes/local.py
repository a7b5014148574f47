"""``local`` volumes: a file or block device already present on this host.

Nothing is attached or logged in on the host: the path was provisioned by
someone else (an operator, a storage agent) and outlives the instance, so
``disconnect`` has nothing to undo and must never remove it.

The disk format is found by reading the volume's first bytes. That is a known
hazard (a guest that writes a qcow2 header into a raw volume would have it
read as qcow2 on the next attach), so a qcow2 header that names a backing file
or an external data file is refused: either would let the image make qemu open
another host file.
"""

from __future__ import annotations

import os
import stat
import struct

from spawnflow.exceptions import VolumeError
from spawnflow.virt.volumes.base import Connection, VolumeConnector, VolumeSpec, require

LUKS_MAGIC = b"LUKS\xba\xbe"
QCOW2_MAGIC = b"QFI\xfb"

# qcow2 header (big-endian): magic, version, backing_file_offset at byte 8;
# incompatible_features (version 3+) at byte 72, bit 2 = external data file.
_QCOW2_HEADER_LEN = 80
_QCOW2_INCOMPAT_DATA_FILE = 1 << 2


class LocalConnector(VolumeConnector):
    """A volume that is a path on this host (regular file or block device)."""

    def connect(self, volume: VolumeSpec) -> Connection:
        require(volume, "path")
        path = volume.path
        if not os.path.isabs(path):
            raise VolumeError(f"volume {volume.id}: path {path!r} is not absolute")
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError as exc:
            raise VolumeError(f"volume {volume.id}: path {path!r} does not exist") from exc
        except OSError as exc:
            raise VolumeError(f"volume {volume.id}: cannot stat {path!r}: {exc}") from exc
        if stat.S_ISBLK(mode):
            # A block device is presented raw; any LUKS on it is handled by
            # the <encryption> element, not by the driver format.
            source_type, driver_format = "block", "raw"
        elif stat.S_ISREG(mode):
            source_type, driver_format = "file", detect_format(volume.id, path)
        else:
            raise VolumeError(
                f"volume {volume.id}: {path!r} is neither a regular file nor a block device"
            )
        return Connection(
            volume_id=volume.id,
            driver=volume.driver,
            source_type=source_type,
            path=path,
            protocol=None,
            name=None,
            hosts=[],
            driver_format=driver_format,
        )

    def disconnect(self, volume: VolumeSpec, connection: Connection | None) -> None:
        # connect() changed nothing on the host, and the file or device is not
        # ours to delete: it belongs to whoever provisioned the volume.
        return None


def detect_format(volume_id: str, path: str) -> str:
    """'qcow2' or 'raw' for the regular file at ``path``, from its header.

    qemu's native LUKS is presented as format raw plus ``<encryption
    format='luks'>``, so a LUKS header also means 'raw'.
    """
    try:
        with open(path, "rb") as f:
            header = f.read(_QCOW2_HEADER_LEN)
    except OSError as exc:
        raise VolumeError(f"volume {volume_id}: cannot read {path!r}: {exc}") from exc
    if header.startswith(LUKS_MAGIC):
        return "raw"
    if not header.startswith(QCOW2_MAGIC):
        return "raw"
    _check_qcow2_header(volume_id, path, header)
    return "qcow2"


def _check_qcow2_header(volume_id: str, path: str, header: bytes) -> None:
    if len(header) < 16:
        raise VolumeError(f"volume {volume_id}: {path!r} has a truncated qcow2 header")
    version, backing_offset = struct.unpack(">IQ", header[4:16])
    if backing_offset:
        raise VolumeError(
            f"volume {volume_id}: qcow2 image {path!r} has a backing file; "
            "local volumes must be self-contained"
        )
    if version >= 3 and len(header) >= _QCOW2_HEADER_LEN:
        (incompatible,) = struct.unpack(">Q", header[72:80])
        if incompatible & _QCOW2_INCOMPAT_DATA_FILE:
            raise VolumeError(
                f"volume {volume_id}: qcow2 image {path!r} has an external data file; "
                "local volumes must be self-contained"
            )
