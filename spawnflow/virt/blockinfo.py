"""Disk bus/device mapping (nova's blockinfo): pure computation, no side effects."""

from __future__ import annotations

from dataclasses import asdict, dataclass

# No 'xvd' (xen): guest_config renders QEMU/KVM guests, which have no xen bus.
_BUS_BY_PREFIX = {"vd": "virtio", "sd": "scsi", "hd": "ide"}


@dataclass(frozen=True)
class DiskMapping:
    name: str  # 'root' or the volume id
    dev: str  # target device, e.g. 'vda'
    bus: str  # 'virtio' | 'scsi' | 'ide'
    type: str  # 'disk'

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def bus_for(dev: str) -> str:
    for prefix in sorted(_BUS_BY_PREFIX, key=len, reverse=True):
        if dev.startswith(prefix):
            return _BUS_BY_PREFIX[prefix]
    raise ValueError(f"cannot tell the bus of device {dev!r}")


def disk_mapping(root_bus: str, volumes: list[tuple[str, str]]) -> dict[str, dict[str, str]]:
    """Map the root disk to vda and each (volume_id, device) to its bus."""
    mapping = {"root": DiskMapping("root", "vda", root_bus, "disk")}
    for volume_id, dev in volumes:
        mapping[volume_id] = DiskMapping(volume_id, dev, bus_for(dev), "disk")
    return {name: m.to_dict() for name, m in mapping.items()}
