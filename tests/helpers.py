"""Shared test helpers: configs, images, specs and a host leak check."""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import libvirt

import spawnflow.conf


def write_conf(path: Path, **groups: dict[str, Any]) -> Path:
    """Write an oslo.config file from {'DEFAULT': {...}, 'libvirt': {...}}."""
    lines = []
    for group, options in groups.items():
        lines.append(f"[{group}]")
        lines += [f"{key} = {value}" for key, value in options.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def load_conf(tmp_path: Path, **groups: dict[str, Any]):
    # Test images are made under tmp_path: allow it as an image source.
    merged: dict[str, dict[str, Any]] = {
        "DEFAULT": {"state_path": tmp_path / "state"},
        "images": {"allowed_sources": tmp_path},
    }
    for group, options in groups.items():
        merged.setdefault(group, {}).update(options)
    path = write_conf(tmp_path / "spawnflow.conf", **merged)
    return spawnflow.conf.load(["--config-file", str(path)])


def make_qcow2(path: Path, size: str = "32M") -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return path


def new_uuid() -> str:
    return str(uuid.uuid4())


def make_spec(image: Path, *, vifs: list[dict] | None = None, **overrides: Any) -> dict:
    spec = {
        "instance": {"uuid": new_uuid(), "name": "vm-" + new_uuid()[:8]},
        "flavor": {"vcpus": 1, "memory_mb": 64, "root_gb": 1},
        "image": {"source": str(image), "disk_format": "qcow2"},
        "vifs": vifs or [],
    }
    spec.update(overrides)
    return spec


def new_mac() -> str:
    return "fa:16:3e:" + ":".join(f"{b:02x}" for b in os.urandom(3))


def bridge_vif(bridge: str, active: bool = True) -> dict:
    return {
        "id": new_uuid(),
        "mac": new_mac(),
        "type": "bridge",
        "bridge": bridge,
        "ips": ["10.0.0.5"],
        "active": active,
    }


def tap_vif(active: bool = True) -> dict:
    """A 'tap' VIF: spawnflow creates the tap, libvirt opens it unmanaged."""
    return {
        "id": new_uuid(),
        "mac": new_mac(),
        "type": "tap",
        "ips": ["10.0.0.6"],
        "active": active,
    }


def history_of(conf, build_id: str):
    """The build's history (spawnflow.history.BuildHistory) read from conf's database."""
    from spawnflow.history import History

    with History.open(spawnflow.conf.database_url(conf)) as history:
        return history.build(build_id)


def leaks(
    conn: libvirt.virConnect, instance_uuid: str, instances_path: Path, taps: list[str] = ()
) -> list[str]:
    """What a rolled-back build left behind on the host (empty means clean)."""
    from spawnflow.virt.vif import netlink

    found = []
    try:
        conn.lookupByUUIDString(instance_uuid)
        found.append(f"domain {instance_uuid}")
    except libvirt.libvirtError:
        pass
    if (instances_path / instance_uuid).exists():
        found.append(f"instance dir {instances_path / instance_uuid}")
    base = instances_path / "_base"
    if base.exists():
        found += [f"partial download {p}" for p in base.glob("*.part")]
    found += [f"tap {t}" for t in taps if netlink.tap_exists(t)]
    # Drivers without secrets or nwfilters (test:///default) raise: nothing to find.
    with contextlib.suppress(libvirt.libvirtError):
        found += [
            f"secret {s.usageID()}"
            for s in conn.listAllSecrets()
            if instance_uuid in (s.usageID() or "")
        ]
    with contextlib.suppress(libvirt.libvirtError):
        found += [
            f"nwfilter {f.name()}" for f in conn.listAllNWFilters() if instance_uuid in f.name()
        ]
    # Filter rules instantiated on a port outlive nothing but a running domain.
    with contextlib.suppress(libvirt.libvirtError):
        found += [
            f"nwfilter binding {b.portDev()} -> {b.filterName()}"
            for b in conn.listAllNWFilterBindings()
            if b.portDev() in taps or instance_uuid in b.filterName()
        ]
    return found
