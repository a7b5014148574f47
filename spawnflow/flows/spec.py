"""The build request: a typed, validated spec read from YAML, JSON or a dict.

Validation happens before anything is written: a bad spec raises ``InvalidSpec``
whose message names every offending field (``volumes.0.path: ...``).
Secret fields are ``SecretStr``; ``redacted()`` is the only form that may be
persisted or logged.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from spawnflow.exceptions import InvalidSpec

Uuid = Annotated[
    str,
    StringConstraints(
        to_lower=True,
        pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
    ),
]
Mac = Annotated[
    str, StringConstraints(to_lower=True, pattern=r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$")
]
Device = Annotated[str, StringConstraints(pattern=r"^(vd|sd|hd|xvd)[a-z]{1,2}$")]
# Instance names end up in domain metadata, logs and file listings: printable, no '/'.
InstanceName = Annotated[
    str, StringConstraints(min_length=1, max_length=255, pattern=r"^[^/\x00-\x1f\x7f]+$")
]

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

class Instance(_Strict):
    uuid: Uuid
    name: InstanceName

class Flavor(_Strict):
    vcpus: int = Field(ge=1, le=1024)
    memory_mb: int = Field(ge=16, le=16 * 1024 * 1024)
    root_gb: int = Field(ge=0, le=64 * 1024)

class Image(_Strict):
    source: str = Field(min_length=1)
    id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._:-]{1,255}$")
    checksum: str | None = Field(default=None, pattern=r"^sha256:[0-9a-fA-F]{64}$")
    disk_format: Literal["qcow2", "raw"] = "qcow2"

    @field_validator("source")
    @classmethod
    def _source_kind(cls, value: str) -> str:
        scheme = urlparse(value).scheme
        if scheme in ("http", "https", "file"):
            return value
        if scheme == "" and os.path.isabs(value):
            return value
        raise ValueError("must be an absolute path, a file:// URL or an http(s):// URL")

    @property
    def cache_id(self) -> str:
        """Key of the _base cache: the image id, else a digest of the source."""
        return self.id or "src-" + hashlib.sha256(self.source.encode()).hexdigest()[:32]

    @property
    def sha256(self) -> str | None:
        return self.checksum.split(":", 1)[1].lower() if self.checksum else None

class Encryption(_Strict):
    format: Literal["luks"] = "luks"
    key_file: str = Field(min_length=1)

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
    path: str | None = None
    portal: str | None = None
    iqn: str | None = None
    lun: int | None = Field(default=None, ge=0)
    auth_username: str | None = None
    auth_password: SecretStr | None = None
    pool: str | None = None
    image: str | None = None
    hosts: list[str] = Field(default_factory=list)
    secret_uuid: Uuid | None = None
    encryption: Encryption | None = None

    @model_validator(mode="after")
    def _driver_fields(self) -> Volume:
        missing = [f for f in VOLUME_FIELDS[self.driver] if getattr(self, f) is None]
        if missing:
            raise ValueError(f"driver {self.driver!r} needs {', '.join(missing)}")
        if self.path is not None and not os.path.isabs(self.path):
            raise ValueError("path must be absolute")
        return self

class Vif(_Strict):
    id: Uuid
    mac: Mac
    type: Literal["bridge", "tap"] = "bridge"
    bridge: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,15}$")] | None = None
    mtu: int | None = Field(default=None, ge=68, le=65535)
    ips: list[str] = Field(default_factory=list)
    active: bool = True

    @field_validator("ips")
    @classmethod
    def _ips(cls, values: list[str]) -> list[str]:
        return [str(ipaddress.ip_address(v)) for v in values]

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
    admin_password: SecretStr | None = None

    @model_validator(mode="after")
    def _unique(self) -> BuildSpec:
        devices = [v.device for v in self.volumes]
        if "vda" in devices:
            raise ValueError("volumes: device vda is the root disk")
        for label, items in (("volumes.device", devices),
                             ("volumes.id", [v.id for v in self.volumes]),
                             ("vifs.id", [v.id for v in self.vifs]),
                             ("vifs.mac", [v.mac for v in self.vifs])):
            dupes = sorted({x for x in items if items.count(x) > 1})
            if dupes:
                raise ValueError(f"{label}: duplicate {', '.join(dupes)}")
        return self

    def redacted(self) -> dict[str, Any]:
        """JSON-ready dict with every secret replaced; the only persisted form."""
        return self.model_dump(mode="json")

    @property
    def domain_name(self) -> str:
        return f"instance-{self.instance.uuid}"

def _format_errors(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "spec"
        lines.append(f"{where}: {item['msg']}")
    return "invalid build spec: " + "; ".join(lines)

def parse_spec(source: BuildSpec | dict | str | os.PathLike) -> BuildSpec:
    """Accept a spec object, a dict, or a path to a YAML/JSON file."""
    if isinstance(source, BuildSpec):
        return source
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise InvalidSpec(f"cannot read build spec {os.fspath(source)!r}: {exc}") from exc
        try:
            source = json.loads(text) if str(source).endswith(".json") else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise InvalidSpec(f"build spec {os.fspath(source)!r} is not valid YAML/JSON: {exc}")\
                from exc
    if not isinstance(source, dict):
        raise InvalidSpec("invalid build spec: spec: must be a mapping")
    try:
        return BuildSpec.model_validate(source)
    except ValidationError as exc:
        raise InvalidSpec(_format_errors(exc)) from None

