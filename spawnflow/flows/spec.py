"""The build request: a typed, validated spec read from YAML, JSON or a dict.

Validation happens before anything is written: a bad spec raises ``InvalidSpec``
whose message names every offending field (``volumes.0.path: ...``).
Secret fields are ``SecretStr``; ``redacted()`` is the only form that may be
persisted or logged.
"""

from __future__ import annotations

import ipaddress
import os
import unicodedata
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from spawnflow.exceptions import InvalidSpec, VolumeError
from spawnflow.flows.spec_file import read_spec_file
from spawnflow.persistence.redact import mask_url
from spawnflow.virt import guest_config as gc
from spawnflow.virt.vif import tap_name
from spawnflow.virt.volumes.base import parse_host_port

# Every rule below stands for a later step that would refuse the value after
# something was written (instance dir, volume connections, secrets, taps):
# the spec refuses it first, naming the field. Where a rule exists in a lower
# layer (guest_config, the volume connectors) the spec calls that layer's own
# check instead of restating it, so the two cannot drift apart.


def _printable(value: str) -> str:
    """Refuse what the domain XML cannot carry (control characters, NUL, U+FFFE/U+FFFF).

    Paths with NUL also make os.stat/open raise ValueError instead of OSError.
    """
    if not value or not gc.is_printable(value):
        raise ValueError("must be non-empty, without control characters or U+FFFE/U+FFFF")
    return value


Text = Annotated[str, AfterValidator(_printable)]

Uuid = Annotated[
    str,
    StringConstraints(
        to_lower=True,
        pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
    ),
]


def _unicast(mac: str) -> str:
    first = int(mac[:2], 16)
    if first & 1:  # libvirt refuses a multicast (or broadcast) guest MAC
        raise ValueError(f"{mac} is a multicast address; a port needs a unicast MAC")
    if mac == "00:00:00:00:00:00":
        raise ValueError("00:00:00:00:00:00 is not a usable MAC address")
    return mac


Mac = Annotated[
    str,
    StringConstraints(to_lower=True, pattern=r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$"),
    AfterValidator(_unicast),
]
# virtio vdX, scsi sdX, ide hdX (guest_config has no xen bus for QEMU guests). The
# default x86 machine (i440fx) has one IDE controller: hda-hdd, and defineXML
# refuses hde+ with "Only 1 IDE controller is supported".
Device = Annotated[str, StringConstraints(pattern=r"^(vd[a-z]{1,2}|sd[a-z]{1,2}|hd[a-d])$")]


def _plain_text(value: str) -> str:
    """Refuse invisible formatting characters (Unicode category Cf: bidi overrides,
    zero-width spaces and joiners, BOM) and C1 controls.

    A name is read by operators in a terminal and in listings: a right-to-left
    override or a zero-width space makes two different names look alike, or
    one name read as another.
    """
    for char in value:
        if unicodedata.category(char) in ("Cf", "Cc"):
            raise ValueError(f"contains the invisible or control character U+{ord(char):04X}")
    return value


# Instance names end up in domain metadata, logs and file listings: printable, no '/'.
InstanceName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=255, pattern=r"^[^/\x00-\x1f\x7f]+$"),
    AfterValidator(_printable),
    AfterValidator(_plain_text),
]
# A tun/tap device takes at most MAX_MTU - ETH_HLEN = 65535 - 14 (the kernel's
# tun max_mtu; setting 65522 gives EINVAL), and every VIF ends in a tap.
TAP_MAX_MTU = 65521
# The generated domain uses the host's default machine type, i440fx on x86,
# whose limit defineXML enforces ("Maximum CPUs greater than specified machine
# type limit 255").
MAX_VCPUS = 255


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Instance(_Strict):
    uuid: Uuid
    name: InstanceName


class Flavor(_Strict):
    vcpus: int = Field(ge=1, le=MAX_VCPUS)
    memory_mb: int = Field(ge=16, le=16 * 1024 * 1024)
    root_gb: int = Field(ge=0, le=64 * 1024)


class Image(_Strict):
    source: Text
    id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._:-]{1,255}$")
    checksum: str | None = Field(default=None, pattern=r"^sha256:[0-9a-fA-F]{64}$")
    disk_format: Literal["qcow2", "raw"] = "qcow2"

    @field_validator("source")
    @classmethod
    def _source_kind(cls, value: str) -> str:
        url = urlparse(value)
        scheme = url.scheme
        if scheme == "file":
            # The image cache reads file:// URLs locally only.
            if url.netloc not in ("", "localhost") or not url.path.startswith("/"):
                raise ValueError(
                    "a file:// URL must name an absolute local path "
                    "(file:///path or file://localhost/path)"
                )
            return value
        if scheme in ("http", "https"):
            if not url.hostname:
                raise ValueError(f"an {scheme}:// URL needs a host")
            if url.username is not None or url.password is not None:
                # The spec is kept in the history; a password in it would be too.
                raise ValueError(
                    "credentials in the URL would be stored in the build "
                    "history; use a URL without user:password@"
                )
            return value
        if scheme == "" and os.path.isabs(value):
            return value
        raise ValueError("must be an absolute path, a file:// URL or an http(s):// URL")

    @property
    def label(self) -> str:
        """How errors name this image: its id (a label only, never a cache key), else
        the masked source."""
        return self.id or repr(mask_url(self.source))

    @property
    def sha256(self) -> str | None:
        return self.checksum.split(":", 1)[1].lower() if self.checksum else None


class Encryption(_Strict):
    format: Literal["luks"] = "luks"
    key_file: Text

    @field_validator("key_file")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not os.path.isabs(value):
            raise ValueError("must be an absolute path")
        return value


VOLUME_FIELDS = {"local": ("path",), "iscsi": ("portal", "iqn", "lun"), "rbd": ("pool", "image")}


class Volume(_Strict):
    id: Uuid
    driver: Literal["local", "iscsi", "rbd"]
    device: Device
    path: Text | None = None
    portal: str | None = None
    # '/' separates the IQN from the LUN in libvirt's source name.
    iqn: Annotated[Text, StringConstraints(pattern=r"^[^/]+$")] | None = None
    lun: int | None = Field(default=None, ge=0)
    # libvirt's genericName: the <auth username> of a network disk.
    auth_username: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_+-]+$")] | None = None
    # Refused when given (see _no_auth_password); kept as a field so the
    # refusal names it instead of pydantic's "Extra inputs" echoing the value.
    auth_password: SecretStr | None = None
    # '/' would make libvirt read an rbd namespace, '@' a snapshot.
    pool: Annotated[Text, StringConstraints(pattern=r"^[^/@]+$")] | None = None
    image: Annotated[Text, StringConstraints(pattern=r"^[^/@]+$")] | None = None
    hosts: list[str] = Field(default_factory=list)
    secret_uuid: Uuid | None = None
    encryption: Encryption | None = None

    @field_validator("auth_password", mode="before")
    @classmethod
    def _no_auth_password(cls, value: Any) -> None:
        # No step would use it: qemu takes CHAP/cephx credentials from a libvirt
        # secret only, and an accepted-and-ignored password is a trap. The
        # message never includes the value (pydantic's own would echo it).
        if value is not None:
            raise ValueError(
                "not accepted: give secret_uuid of a libvirt secret (usage allowed by "
                "[volumes] allowed_secret_usages) holding the CHAP/cephx password instead"
            )
        return None

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, value: str | None) -> str | None:
        # A field validator, so the refusal names volumes.N.path itself.
        if value is not None and not os.path.isabs(value):
            raise ValueError("must be an absolute path")
        return value

    @field_validator("portal")
    @classmethod
    def _portal(cls, value: str | None) -> str | None:
        return None if value is None else _network_host(value, "portal", 3260)

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, values: list[str]) -> list[str]:
        return [_network_host(v, "hosts", 6789) for v in values]

    @model_validator(mode="after")
    def _driver_fields(self) -> Volume:
        missing = [f for f in VOLUME_FIELDS[self.driver] if getattr(self, f) is None]
        if missing:
            raise ValueError(f"driver {self.driver!r} needs {', '.join(missing)}")
        # The connectors refuse one without the other (CHAP/cephx need both the
        # user and the libvirt secret holding its password).
        if self.driver in ("iscsi", "rbd") and (self.auth_username is None) != (
            self.secret_uuid is None
        ):
            raise ValueError("auth_username and secret_uuid must be given together")
        return self


class Vif(_Strict):
    id: Uuid
    mac: Mac
    type: Literal["bridge", "tap"] = "bridge"
    bridge: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,15}$")] | None = None
    mtu: int | None = Field(default=None, ge=68, le=TAP_MAX_MTU)
    ips: list[str] = Field(default_factory=list)
    active: bool = True

    @field_validator("bridge")
    @classmethod
    def _ifname(cls, value: str | None) -> str | None:
        if value in (".", ".."):  # the kernel's dev_valid_name() refuses these
            raise ValueError(f"{value!r} is not a valid interface name")
        return value

    @field_validator("ips")
    @classmethod
    def _ips(cls, values: list[str]) -> list[str]:
        found = []
        for value in values:
            address = ipaddress.ip_address(value)
            if getattr(address, "scope_id", None):
                raise ValueError(f"{value!r} has a zone index; give the plain address")
            text = str(address)
            # The addresses become nwfilter parameters of the interface.
            try:
                gc.FilterRef("f", [("IP", text)])
            except ValueError as exc:
                raise ValueError(f"{value!r} cannot be a filter parameter: {exc}") from None
            if text in found:
                raise ValueError(f"duplicate address {text}")
            found.append(text)
        return found

    @model_validator(mode="after")
    def _bridge_needed(self) -> Vif:
        if self.type == "bridge" and not self.bridge:
            raise ValueError("type 'bridge' needs a bridge name")
        return self


class BuildSpec(_Strict):
    instance: Instance
    flavor: Flavor
    image: Image
    volumes: list[Volume] = Field(default_factory=list)
    vifs: list[Vif] = Field(default_factory=list)
    power_on: bool = True
    # Refused when given (see _no_admin_password), never accepted and ignored.
    admin_password: SecretStr | None = None

    @field_validator("admin_password", mode="before")
    @classmethod
    def _no_admin_password(cls, value: Any) -> None:
        # The message never includes the value (pydantic's own would echo it).
        if value is not None:
            raise ValueError(
                "not supported: spawnflow has no config drive or guest agent to set it; "
                "put credentials in the image or inject them with cloud-init from a "
                "metadata service, and leave admin_password out"
            )
        return None

    @model_validator(mode="after")
    def _unique(self) -> BuildSpec:
        devices = [v.device for v in self.volumes]
        if "vda" in devices:
            raise ValueError("volumes: device vda is the root disk")
        # Tap names keep only 11 characters of the port id (IFNAMSIZ), so two
        # ports may differ in their ids and still want the same tap.
        taps = [tap_name(v.id) for v in self.vifs]
        for label, items in (
            ("volumes.device", devices),
            ("volumes.id", [v.id for v in self.volumes]),
            # QEMU cannot open one file twice ("Failed to get write lock")
            (
                "volumes.path",
                [os.path.normpath(v.path) for v in self.volumes if v.driver == "local" and v.path],
            ),
            ("vifs.id", [v.id for v in self.vifs]),
            ("vifs.mac", [v.mac for v in self.vifs]),
            ("vifs.id (tap name)", taps),
        ):
            dupes = sorted({x for x in items if items.count(x) > 1})
            if dupes:
                raise ValueError(f"{label}: duplicate {', '.join(dupes)}")
        bridges = {v.bridge for v in self.vifs if v.type == "bridge" and v.bridge is not None}
        clash = sorted(bridges & set(taps))
        if clash:
            raise ValueError(f"vifs.bridge: {', '.join(clash)} is the tap name of a port")
        return self

    def redacted(self) -> dict[str, Any]:
        """JSON-ready dict with every secret replaced; the only persisted form.

        ``image.source`` loses its query, fragment and userinfo (``mask_url``):
        a presigned URL's token must not reach the event log.
        """
        data = self.model_dump(mode="json")
        data["image"]["source"] = mask_url(data["image"]["source"])
        return data

    @property
    def domain_name(self) -> str:
        return f"instance-{self.instance.uuid}"


def _network_host(value: str, field: str, default_port: int) -> str:
    """``host[:port]`` as the iSCSI/RBD connectors parse it and the domain XML takes it."""
    try:
        gc.NetworkDiskHost(*parse_host_port("-", field, value, default_port))
    except VolumeError as exc:
        raise ValueError(str(exc).removeprefix(f"volume -: {field} ")) from None
    except ValueError as exc:
        raise ValueError(f"{value!r} is not host[:port] ({exc})") from None
    return value


def _format_errors(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "spec"
        lines.append(f"{where}: {item['msg']}")
    return "invalid build spec: " + "; ".join(lines)


def parse_spec(source: BuildSpec | dict[str, Any] | str | os.PathLike[str]) -> BuildSpec:
    """Accept a spec object, a dict, or a path to a YAML/JSON file."""
    if isinstance(source, BuildSpec):
        return source
    if isinstance(source, (str, os.PathLike)):
        source = read_spec_file(source)
    if not isinstance(source, dict):
        raise InvalidSpec("invalid build spec: spec: must be a mapping")
    try:
        return BuildSpec.model_validate(source)
    except ValidationError as exc:
        raise InvalidSpec(_format_errors(exc)) from None
    except RecursionError:
        raise InvalidSpec("invalid build spec: spec: nested too deeply") from None
