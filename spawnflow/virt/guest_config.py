"""Libvirt domain XML built from typed, validated config objects.

A small counterpart of nova's ``nova/virt/libvirt/config.py``.  Each dataclass
checks its fields in ``__post_init__`` (raising ``ValueError`` that names the
field) and renders itself with ``to_element()``.  XML is only ever assembled
from ``lxml`` elements, never by string formatting, so names, paths and
metadata supplied by users stay data and can never become markup.
"""

from __future__ import annotations

import re
import uuid as uuidlib
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime

from lxml import etree

METADATA_NS = "https://spawnflow.dev/xmlns/instance/1.0"
_MD = f"{{{METADATA_NS}}}"

# Anything outside these ranges cannot be carried by XML 1.0; control
# characters (newline included) are refused too because every value we emit
# is a one-line field for libvirt.
_BAD_CHARS = re.compile("[^\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_UUID_RE = re.compile(r"[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}", re.I)
_ABS_PATH_RE = re.compile(r"/.*")
_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", re.I)
_IFNAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}")  # Linux IFNAMSIZ is 16 incl. NUL
_HOST_RE = re.compile(r"[A-Za-z0-9.:-]+")  # DNS name, IPv4 or IPv6
_WORD_RE = re.compile(r"[A-Za-z0-9_-]+")
_MACHINE_RE = re.compile(r"[A-Za-z0-9_.-]+")
# libvirt's own schema patterns (genericName, diskSerial, nwfilter params).
_USERNAME_RE = re.compile(r"[A-Za-z0-9_+-]+")
_SERIAL_RE = re.compile(r"[A-Za-z0-9_.+\- ]+")
_PARAM_NAME_RE = re.compile(r"[A-Za-z0-9_]+")
_PARAM_VALUE_RE = re.compile(r"[A-Za-z0-9_.:]+")
_NCNAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")

# libvirt derives the guest-visible address from the target name, so a name
# that does not match its bus ends up somewhere the caller did not expect.
_BUS_PREFIX = {"virtio": "vd", "scsi": "sd", "sata": "sd", "ide": "hd"}
_SECRET_TYPE_FOR = {"iscsi": "iscsi", "rbd": "ceph"}
_AUTH_FIELDS = ("auth_username", "auth_secret_type", "auth_secret_uuid")
_FLAVOR_KEYS = frozenset({"vcpus", "memory_mb", "root_gb"})
_LIFECYCLE = frozenset({"destroy", "restart", "preserve"})
_X86 = frozenset({"x86_64", "i686"})


def is_printable(value: str) -> bool:
    """True if every character of ``value`` can go into a one-line XML field."""
    return not _BAD_CHARS.search(value)


def _choice(name: str, value: object, choices: Collection[str]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: {value!r} is not one of {sorted(choices)}")


def _str(name: str, value: object, regex: re.Pattern[str] | None = None, hint: str = "") -> None:
    if not isinstance(value, str) or not value or _BAD_CHARS.search(value):
        raise ValueError(f"{name}: {value!r} is not a non-empty string of printable characters")
    if regex is not None and not regex.fullmatch(value):
        raise ValueError(f"{name}: {value!r} is not {hint}")


def _int(name: str, value: object, lo: int, hi: int | None = None) -> None:
    # bool is an int subclass; True as a vcpu count is a bug, not a 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bounds = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name}: {value} is out of range {bounds}")


def _items(name: str, values: object, kind: type) -> None:
    if not isinstance(values, list | tuple) or not all(isinstance(v, kind) for v in values):
        raise ValueError(f"{name}: must be a list of {kind.__name__}")


def _sub(
    parent: etree._Element, tag: str, text: str | None = None, **attrs: str | None
) -> etree._Element:
    """Append a child; attributes whose value is None are left out."""
    child = etree.SubElement(parent, tag, {k: v for k, v in attrs.items() if v is not None})
    if text is not None:
        child.text = text
    return child


@dataclass(frozen=True)
class DiskEncryption:
    """qemu-native LUKS; the passphrase is held in a libvirt secret."""

    secret_uuid: str

    def __post_init__(self) -> None:
        _str("DiskEncryption.secret_uuid", self.secret_uuid, _UUID_RE, "a UUID")

    def to_element(self) -> etree._Element:
        enc = etree.Element("encryption", format="luks")
        _sub(enc, "secret", type="passphrase", uuid=self.secret_uuid)
        return enc


@dataclass(frozen=True)
class NetworkDiskHost:
    name: str
    port: int | None = None

    def __post_init__(self) -> None:
        _str("NetworkDiskHost.name", self.name, _HOST_RE, "a host name or IP address")
        if self.port is not None:
            _int("NetworkDiskHost.port", self.port, 1, 65535)

    def to_element(self) -> etree._Element:
        host = etree.Element("host", name=self.name)
        if self.port is not None:
            host.set("port", str(self.port))
        return host


@dataclass(frozen=True)
class GuestDisk:
    target_dev: str
    target_bus: str
    source_type: str
    driver_format: str = "raw"
    source_path: str | None = None
    source_protocol: str | None = None
    source_name: str | None = None
    source_hosts: list[NetworkDiskHost] = field(default_factory=list)
    auth_username: str | None = None
    auth_secret_type: str | None = None
    auth_secret_uuid: str | None = None
    encryption: DiskEncryption | None = None
    device: str = "disk"
    serial: str | None = None
    readonly: bool = False

    def __post_init__(self) -> None:
        p = "GuestDisk."
        _choice(p + "target_bus", self.target_bus, _BUS_PREFIX)
        _choice(p + "source_type", self.source_type, {"file", "block", "network"})
        _choice(p + "driver_format", self.driver_format, {"raw", "qcow2"})
        _choice(p + "device", self.device, {"disk", "cdrom"})
        prefix = _BUS_PREFIX[self.target_bus]
        _str(
            p + "target_dev",
            self.target_dev,
            re.compile(prefix + "[a-z]{1,3}"),
            f"a {self.target_bus} device name like '{prefix}a'",
        )
        if self.device == "cdrom" and self.target_bus == "virtio":
            raise ValueError(f"{p}target_bus: a cdrom cannot sit on virtio; use sata, scsi or ide")
        if self.source_type == "network":
            self._check_network()
        else:
            _str(p + "source_path", self.source_path, _ABS_PATH_RE, "an absolute path")
            for key in ("source_protocol", "source_name", "source_hosts", *_AUTH_FIELDS):
                if getattr(self, key):
                    raise ValueError(f"{p}{key}: only valid for network disks")
        if self.serial is not None:
            _str(p + "serial", self.serial, _SERIAL_RE, "a disk serial ([A-Za-z0-9_.+- ])")

    def _check_network(self) -> None:
        p = "GuestDisk."
        if self.source_path is not None:
            raise ValueError(f"{p}source_path: network disks use source_protocol/source_name")
        _choice(p + "source_protocol", self.source_protocol, _SECRET_TYPE_FOR)
        _str(p + "source_name", self.source_name)
        _items(p + "source_hosts", self.source_hosts, NetworkDiskHost)
        # libvirt's schema allows exactly one iscsi portal but any number of rbd monitors.
        if self.source_protocol == "iscsi" and len(self.source_hosts) != 1:
            raise ValueError(f"{p}source_hosts: an iscsi disk needs exactly one portal host")
        # Both are strings: _choice and _str refused anything else above.
        protocol, name = self.source_protocol or "", self.source_name or ""
        if protocol == "rbd" and "/" not in name:
            raise ValueError(f"{p}source_name: {self.source_name!r} is not 'pool/image'")
        if all(getattr(self, key) is None for key in _AUTH_FIELDS):
            return
        _str(p + "auth_username", self.auth_username, _USERNAME_RE, "a name of [A-Za-z0-9_+-]")
        wanted = _SECRET_TYPE_FOR[protocol]
        if self.auth_secret_type != wanted:
            raise ValueError(
                f"{p}auth_secret_type: {self.source_protocol} disks need "
                f"{wanted!r}, got {self.auth_secret_type!r}"
            )
        _str(p + "auth_secret_uuid", self.auth_secret_uuid, _UUID_RE, "a UUID")

    def to_element(self) -> etree._Element:
        disk = etree.Element("disk", type=self.source_type, device=self.device)
        _sub(disk, "driver", name="qemu", type=self.driver_format, cache="none")
        if self.source_type == "file":
            _sub(disk, "source", file=self.source_path)
        elif self.source_type == "block":
            _sub(disk, "source", dev=self.source_path)
        else:
            src = _sub(disk, "source", protocol=self.source_protocol, name=self.source_name)
            for host in self.source_hosts:
                src.append(host.to_element())
            if self.auth_username is not None:
                auth = _sub(src, "auth", username=self.auth_username)
                _sub(auth, "secret", type=self.auth_secret_type, uuid=self.auth_secret_uuid)
        _sub(disk, "target", dev=self.target_dev, bus=self.target_bus)
        if self.readonly:
            _sub(disk, "readonly")
        if self.serial is not None:
            _sub(disk, "serial", self.serial)
        if self.encryption is not None:
            disk.append(self.encryption.to_element())
        return disk


@dataclass(frozen=True)
class FilterRef:
    name: str
    parameters: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        _str("FilterRef.name", self.name, _NCNAME_RE, "an nwfilter name")
        for pair in self.parameters:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise ValueError(f"FilterRef.parameters: {pair!r} is not a (name, value) pair")
            _str("FilterRef.parameters", pair[0], _PARAM_NAME_RE, "a parameter name")
            _str("FilterRef.parameters", pair[1], _PARAM_VALUE_RE, "a value of [A-Za-z0-9_.:]")

    def to_element(self) -> etree._Element:
        ref = etree.Element("filterref", filter=self.name)
        for name, value in self.parameters:
            _sub(ref, "parameter", name=name, value=value)
        return ref


@dataclass(frozen=True)
class GuestInterface:
    kind: str
    mac: str
    model: str = "virtio"
    bridge: str | None = None
    target_dev: str | None = None
    managed_tap: bool = True
    mtu: int | None = None
    filterref: FilterRef | None = None

    def __post_init__(self) -> None:
        p = "GuestInterface."
        _choice(p + "kind", self.kind, {"bridge", "ethernet"})
        _str(p + "mac", self.mac, _MAC_RE, "a MAC address like 'fa:16:3e:00:00:01'")
        if int(self.mac[:2], 16) & 1:  # libvirt refuses multicast addresses
            raise ValueError(f"{p}mac: {self.mac!r} is a multicast address")
        _str(p + "model", self.model, _WORD_RE, "a NIC model name")
        if self.kind == "bridge":
            _str(p + "bridge", self.bridge, _IFNAME_RE, "a bridge interface name")
        elif self.bridge is not None:
            raise ValueError(f'{p}bridge: only valid for kind="bridge"')
        if self.target_dev is not None:
            _str(p + "target_dev", self.target_dev, _IFNAME_RE, "an interface name")
        if not self.managed_tap:
            # libvirt supports managed='no' only for a pre-created ethernet tap.
            if self.kind != "ethernet":
                raise ValueError(f'{p}managed_tap: False is only valid for kind="ethernet"')
            if self.target_dev is None:
                raise ValueError(f"{p}target_dev: required when managed_tap is False")
        if self.mtu is not None:
            _int(p + "mtu", self.mtu, 68, 65535)

    def to_element(self) -> etree._Element:
        iface = etree.Element("interface", type=self.kind)
        _sub(iface, "mac", address=self.mac.lower())
        if self.bridge is not None:
            _sub(iface, "source", bridge=self.bridge)
        if self.target_dev is not None:
            _sub(iface, "target", dev=self.target_dev, managed=None if self.managed_tap else "no")
        _sub(iface, "model", type=self.model)
        if self.mtu is not None:
            _sub(iface, "mtu", size=str(self.mtu))
        if self.filterref is not None:
            iface.append(self.filterref.to_element())
        return iface


@dataclass(frozen=True)
class GuestMetadata:
    instance_name: str
    build_id: str
    flavor: dict[str, int]
    created_at: str

    def __post_init__(self) -> None:
        p = "GuestMetadata."
        _str(p + "instance_name", self.instance_name)
        _str(p + "build_id", self.build_id)
        if not isinstance(self.flavor, dict) or self.flavor.keys() != _FLAVOR_KEYS:
            raise ValueError(f"{p}flavor: must be a dict with exactly {sorted(_FLAVOR_KEYS)}")
        for key, value in self.flavor.items():
            _int(f"{p}flavor[{key!r}]", value, 0)
        _str(p + "created_at", self.created_at)
        try:
            datetime.fromisoformat(self.created_at)
        except ValueError:
            raise ValueError(
                f"{p}created_at: {self.created_at!r} is not an ISO 8601 time"
            ) from None

    def to_element(self) -> etree._Element:
        inst = etree.Element(_MD + "instance", nsmap={"spawnflow": METADATA_NS})
        _sub(inst, _MD + "name", self.instance_name)
        _sub(inst, _MD + "build-id", self.build_id)
        _sub(inst, _MD + "created-at", self.created_at)
        flavor = _sub(inst, _MD + "flavor")
        for key, value in sorted(self.flavor.items()):
            _sub(flavor, _MD + key, str(value))
        return inst


@dataclass(frozen=True)
class GuestConfig:
    virt_type: str
    uuid: str
    name: str
    memory_mb: int
    vcpus: int
    metadata: GuestMetadata | None = None
    os_type: str = "hvm"
    arch: str | None = None
    machine: str | None = None
    boot_dev: str = "hd"
    disks: list[GuestDisk] = field(default_factory=list)
    interfaces: list[GuestInterface] = field(default_factory=list)
    console_log_path: str | None = None
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"

    def __post_init__(self) -> None:
        p = "GuestConfig."
        _choice(p + "virt_type", self.virt_type, {"qemu", "kvm", "test"})
        _str(p + "uuid", self.uuid, _UUID_RE, "a UUID")
        _str(p + "name", self.name)
        if "/" in self.name:  # the qemu driver uses the name in file paths
            raise ValueError(f"{p}name: {self.name!r} must not contain '/'")
        _int(p + "memory_mb", self.memory_mb, 1)
        _int(p + "vcpus", self.vcpus, 1)
        _choice(p + "os_type", self.os_type, {"hvm"})
        if self.arch is not None:
            _str(p + "arch", self.arch, _WORD_RE, "an architecture like 'x86_64'")
        if self.machine is not None:
            _str(p + "machine", self.machine, _MACHINE_RE, "a machine type like 'q35'")
        _choice(p + "boot_dev", self.boot_dev, {"hd", "cdrom", "network", "fd"})
        if self.console_log_path is not None:
            _str(p + "console_log_path", self.console_log_path, _ABS_PATH_RE, "an absolute path")
        for event in ("on_poweroff", "on_reboot", "on_crash"):
            _choice(p + event, getattr(self, event), _LIFECYCLE)
        self._check_devices()

    def _check_devices(self) -> None:
        # Lists stay mutable on a frozen dataclass, so to_element() checks again.
        p = "GuestConfig."
        _items(p + "disks", self.disks, GuestDisk)
        _items(p + "interfaces", self.interfaces, GuestInterface)
        for what, values in (
            ("disks", [d.target_dev for d in self.disks]),
            ("interfaces", [i.mac.lower() for i in self.interfaces]),
            ("interfaces", [i.target_dev for i in self.interfaces if i.target_dev is not None]),
        ):
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                raise ValueError(f"{p}{what}: duplicate {', '.join(dupes)}")

    def to_element(self) -> etree._Element:
        self._check_devices()
        dom = etree.Element("domain", type=self.virt_type)
        _sub(dom, "name", self.name)
        _sub(dom, "uuid", self.uuid)
        if self.metadata is not None:
            _sub(dom, "metadata").append(self.metadata.to_element())
        _sub(dom, "memory", str(self.memory_mb), unit="MiB")
        _sub(dom, "vcpu", str(self.vcpus))
        os_el = _sub(dom, "os")
        _sub(os_el, "type", self.os_type, arch=self.arch, machine=self.machine)
        _sub(os_el, "boot", dev=self.boot_dev)
        # arch None means "the host's", and spawnflow hosts are x86.
        if self.arch is None or self.arch in _X86:
            features = _sub(dom, "features")
            _sub(features, "acpi")
            _sub(features, "apic")
        _sub(dom, "clock", offset="utc")
        _sub(dom, "on_poweroff", self.on_poweroff)
        _sub(dom, "on_reboot", self.on_reboot)
        _sub(dom, "on_crash", self.on_crash)
        devices = _sub(dom, "devices")
        for device in self.disks:
            devices.append(device.to_element())
        for interface in self.interfaces:
            devices.append(interface.to_element())
        serial = _sub(devices, "serial", type="pty")
        if self.console_log_path is not None:
            _sub(serial, "log", file=self.console_log_path, append="off")
        _sub(serial, "target", port="0")
        _sub(_sub(devices, "console", type="pty"), "target", type="serial", port="0")
        return dom

    def to_xml(self) -> str:
        text: str = etree.tostring(self.to_element(), encoding="unicode", pretty_print=True)
        return text


def parse_domain_uuid(xml: str) -> str:
    """Return the canonical <uuid> of a <domain> document."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    try:
        root = etree.fromstring(xml.encode("utf-8"), parser)
    except etree.XMLSyntaxError as exc:
        raise ValueError(f"xml: not well-formed: {exc}") from None
    if root.tag != "domain":
        raise ValueError(f"xml: root element is <{root.tag}>, not <domain>")
    try:
        return str(uuidlib.UUID((root.findtext("uuid") or "").strip()))
    except ValueError:
        raise ValueError("xml: <domain> has no valid <uuid>") from None
