"""What a build that ended FAILED left on the host, by name, from its steps' results.

A FAILED build is one whose rollback stopped at a revert that kept failing;
TaskFlow reverts nothing before it after that, so every step that ran and was
not reverted still has what it made on the host. The operator needs names,
not step names: the domain's uuid, the tap, the secret, the filter, the
instance directory. They come from each step's recorded result (the step
results in ``persistence.step_results``); a step that ran without recording
one (it failed, or the agent died inside it) is named with the marker that
finds what it made.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from spawnflow.history.model import BuildRecord, StepHistory


def _image(result: dict[str, Any]) -> list[str]:
    if result.get("created_dir"):
        return [f"instance directory {result.get('instance_dir')}"]
    if result.get("created_disk"):
        return [f"instance disk {result.get('disk_path')}"]
    return []


def _volumes(result: list[dict[str, Any]]) -> list[str]:
    return [
        f"volume {c.get('volume_id')} connection ({c.get('path') or c.get('name')})"
        for c in result
        if isinstance(c, dict)
    ]


def _encryptor(result: dict[str, Any]) -> list[str]:
    return [f"libvirt secret {uuid} (volume {volume})" for volume, uuid in result.items()]


def _vifs(result: dict[str, Any]) -> list[str]:
    left = []
    for plug in result.get("plugged") or []:
        if plug.get("created_tap"):
            left.append(f"tap {plug.get('tap')}")
        if plug.get("created_bridge"):
            left.append(f"bridge of port {plug.get('vif_id')}")
    return left


def _firewall(result: list[str]) -> list[str]:
    return [f"nwfilter {name} (and its binding)" for name in result]


def _domain(result: dict[str, Any]) -> list[str]:
    return [f"domain {result.get('uuid')}"]


# Steps that make something on the host, and how their result names it.
_NAMERS: dict[str, Callable[[Any], list[str]]] = {
    "image": _image,
    "volumes": _volumes,
    "encryptor": _encryptor,
    "vifs": _vifs,
    "firewall": _firewall,
    "domain_create": _domain,
}
_MARKERS = {
    "image": "the instance directory's marker file",
    "volumes": "the volume connections of the instance",
    "encryptor": "secrets whose usage id carries the build id",
    "vifs": "taps whose alias carries the build id",
    "firewall": "nwfilters whose name carries the build id",
    "domain_create": "the domain with the instance's uuid and the build id in its metadata",
}


def _left_by(step: StepHistory, build_id: str) -> list[str]:
    namer = _NAMERS.get(step.name)
    if namer is None:
        return []
    result = step.made if step.made is not None else step.result
    if isinstance(result, dict | list):
        try:
            return namer(result)
        except (AttributeError, TypeError):
            pass  # a result of another shape (an older flow): fall back on the marker
    return [f"whatever step {step.name} made (find it by {_MARKERS[step.name]}: {build_id})"]


def leftovers(build: BuildRecord) -> list[str]:
    """What is still on the host of every step that ran and was not reverted."""
    left: list[str] = []
    for step in build.steps:
        if step.ran and not step.reverted:
            left += _left_by(step, build.build_id)
    return left
