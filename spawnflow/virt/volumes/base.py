"""Types shared by all volume connectors: the volume spec, the recorded
connection, and the connector interface.

A connector turns a :class:`VolumeSpec` into a :class:`Connection` (what the
guest will attach) and a connection into a :class:`GuestDisk`. The connection
is recorded in the task result, so it is a plain, JSON-serialisable dataclass
and a revert can rebuild it with :meth:`Connection.from_dict`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from spawnflow.exceptions import VolumeError
from spawnflow.virt.guest_config import DiskEncryption, GuestDisk, NetworkDiskHost
from spawnflow.virt.plugins import Plugin


@dataclass
class VolumeSpec:
    """One volume to attach, as the build spec describes it.

    Which fields matter depends on ``driver``: ``path`` for local; ``portal``,
    ``iqn``, ``lun`` for iscsi; ``pool``, ``image``, ``hosts`` for rbd.
    """

    id: str
    driver: str
    device: str
    path: str | None = None
    portal: str | None = None
    iqn: str | None = None
    lun: int | None = None
    auth_username: str | None = None
    auth_secret_uuid: str | None = None
    pool: str | None = None
    image: str | None = None
    hosts: list[str] = field(default_factory=list)


@dataclass
class Connection:
    """How the guest reaches a connected volume; recorded in the task result."""

    volume_id: str
    driver: str
    source_type: str  # 'file' | 'block' | 'network'
    path: str | None
    protocol: str | None
    name: str | None
    hosts: list[tuple[str, int | None]]
    driver_format: str
    auth_username: str | None = None
    auth_secret_type: str | None = None
    auth_secret_uuid: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Connection:
        """Rebuild a connection read back from JSON (where tuples became lists)."""
        values = dict(data)
        values["hosts"] = [
            (str(h[0]), None if h[1] is None else int(h[1])) for h in values.get("hosts") or []
        ]
        return cls(**values)


@dataclass(frozen=True)
class VolumePolicy:
    """What the operator lets a volume reach on this host, given to every connector.

    ``allowed_paths`` is ``[volumes] allowed_paths``: directories (regular files
    inside them) and block-device globs (an entry with ``*``, ``?`` or ``[``).
    ``forbidden`` holds ``(label, path)`` pairs no volume may ever reach, whatever
    the allow list says (state_path, instances_path, the event log files); the
    label names the path in refusals. The connector checks again at connect
    time what the spec check allowed, so a link changed in between is caught.
    """

    allowed_paths: tuple[str, ...] = ()
    forbidden: tuple[tuple[str, str], ...] = ()


class VolumeConnector(Plugin, ABC):
    """Connects one kind of volume to the host and describes it to libvirt.

    Loaded by the volume's ``driver`` with ``VolumeConnector.load(driver)``,
    or ``VolumeConnector.load(driver, policy=policy)`` to connect. ``policy``
    bounds what ``connect`` may reach; a connector made without one (to
    describe a recorded connection) reaches nothing on the host.
    """

    NAMESPACE = "spawnflow.volume_connectors"
    ERROR = VolumeError
    PLUGIN = "volume connector"
    SELECTOR = "volume driver"

    def __init__(self, policy: VolumePolicy | None = None):
        self.policy = policy or VolumePolicy()

    @abstractmethod
    def connect(self, volume: VolumeSpec) -> Connection:
        """Make the volume usable by the guest; safe to call again after a crash."""

    @abstractmethod
    def disconnect(self, volume: VolumeSpec, connection: Connection | None) -> None:
        """Undo ``connect``; a volume that is already disconnected is fine."""

    def guest_disk(
        self,
        connection: Connection,
        target_dev: str,
        bus: str,
        encryption: DiskEncryption | None = None,
    ) -> GuestDisk:
        """The domain ``<disk>`` for a connection; the volume id is its serial."""
        network = connection.source_type == "network"
        try:
            return GuestDisk(
                target_dev=target_dev,
                target_bus=bus,
                source_type=connection.source_type,
                driver_format=connection.driver_format,
                source_path=None if network else connection.path,
                source_protocol=connection.protocol if network else None,
                source_name=connection.name if network else None,
                source_hosts=[NetworkDiskHost(name, port) for name, port in connection.hosts],
                auth_username=connection.auth_username,
                auth_secret_type=connection.auth_secret_type,
                auth_secret_uuid=connection.auth_secret_uuid,
                encryption=encryption,
                # Like nova: the guest sees the volume id as the disk serial,
                # so it can find the disk under /dev/disk/by-id.
                serial=connection.volume_id,
            )
        except ValueError as exc:
            raise VolumeError(
                f"volume {connection.volume_id}: cannot describe the guest disk: {exc}"
            ) from exc


def require(volume: VolumeSpec, *names: str) -> None:
    """Raise VolumeError naming the first of ``names`` that is unset on ``volume``."""
    for name in names:
        value = getattr(volume, name)
        if value is None or value == "":
            raise VolumeError(f"volume {volume.id}: driver {volume.driver!r} needs field {name!r}")


def check_auth(volume: VolumeSpec) -> None:
    """CHAP/cephx credentials come as a pair: a user name and a libvirt secret."""
    if volume.auth_username and not volume.auth_secret_uuid:
        raise VolumeError(f"volume {volume.id}: auth_username is set but auth_secret_uuid is not")
    if volume.auth_secret_uuid and not volume.auth_username:
        raise VolumeError(f"volume {volume.id}: auth_secret_uuid is set but auth_username is not")


def parse_host_port(
    volume_id: str, field_name: str, value: str, default_port: int
) -> tuple[str, int]:
    """Split ``host[:port]``; IPv6 literals are written ``[addr]:port`` or bare.

    The host is returned without brackets, which is how libvirt wants it in
    ``<host name=...>``.
    """
    text = value.strip()

    def bad(why: str) -> VolumeError:
        return VolumeError(f"volume {volume_id}: {field_name} {value!r} {why}")

    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise bad("has an unclosed '['")
        if rest and not rest.startswith(":"):
            raise bad("has text after ']' that is not ':port'")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        # No colon, or a bare IPv6 literal, which cannot carry a port.
        host, port_text = text, None
    if not host:
        raise bad("has no host")
    if port_text is None:
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise bad("has an invalid port")
    return host, int(port_text)
