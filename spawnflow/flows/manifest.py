"""The flows' names, steps and step versions, without the steps' code.

What a process that only queues builds needs to record a build's flow
version (``spawnflow.client`` on a machine without libvirt; importing the
steps themselves would import libvirt and pyroute2). The steps' classes say
the same thing (``flows.spawn.TASKS``, ``flows.teardown.TASKS``);
tests/unit/test_flow_manifest.py keeps the two equal, so bumping a step's
``step_version`` without this table fails the tests, not a recovery.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

SPAWN = "spawn"
DELETE = "delete"

Steps = tuple[tuple[str, tuple[int, int]], ...]

SPAWN_STEPS: Steps = (
    ("disk_info", (1, 0)),
    ("image", (1, 0)),
    ("volumes", (1, 0)),
    ("encryptor", (1, 0)),
    ("domain_xml", (1, 0)),
    ("vifs", (1, 0)),
    ("firewall", (1, 0)),
    ("domain_create", (1, 0)),
    ("resume", (1, 0)),
    ("wait_for_boot", (1, 0)),
)
DELETE_STEPS: Steps = (
    ("cancel_builds", (1, 0)),
    ("power_off", (1, 0)),
    ("unplug_vifs", (1, 0)),
    ("remove_filters", (1, 0)),
    ("disconnect_volumes", (1, 0)),
    ("remove_files", (1, 0)),
    ("undefine_secrets", (1, 0)),
    ("undefine_domain", (1, 0)),
)


def digest(flow_name: str, steps: Sequence[tuple[str, Sequence[int]]]) -> str:
    """A flow's version: a digest of its name, step names, order and step versions.

    Twelve hex digits of a SHA-256: enough to tell releases apart, short
    enough to read in a history line.
    """
    text = "\n".join(f"{name}=={'.'.join(map(str, version))}" for name, version in steps)
    return hashlib.sha256(f"{flow_name}\n{text}".encode()).hexdigest()[:12]


def spawn_flow_version() -> str:
    return digest(SPAWN, SPAWN_STEPS)


def delete_flow_version() -> str:
    return digest(DELETE, DELETE_STEPS)
