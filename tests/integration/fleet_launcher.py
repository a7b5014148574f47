"""The fleet test's agent launcher: ``spawnflow agent`` that counts its side effects.

    python -m tests.integration.fleet_launcher --host h3 --effects FILE -- \
        --config-file X agent

An agent on libvirt's in-process ``test:///default`` driver keeps its domains
in its own memory, so a kill -9 takes them with it: what ran where can only
be counted from outside. This launcher wraps the host primitives a spawn
build changes the host with and appends one line per side effect that really
happened, after it happened, to ``FILE``:

    <host> <instance> <build> <effect>

``disk`` (the root disk was created, not adopted), ``define`` (a domain was
defined, not found defined), ``start`` (a stopped domain was started),
``destroy`` and ``undefine`` (a revert removed a domain). Each line is one
``write`` on an ``O_APPEND`` descriptor: whole lines, in order, whatever
thread writes them, and in the file as soon as the call returns (a kill -9
loses only a side effect whose line was not written yet). No product code
is changed: the wrappers are installed in this process before the agent
starts, as tests/crash/launcher.py installs its fault points.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lxml import etree

from spawnflow.cmd.main import main
from spawnflow.virt import domain, instance_disks
from spawnflow.virt.guest_config import METADATA_NS
from spawnflow.virt.instance_files import DISK_MARKER

EFFECTS = ("disk", "define", "start", "destroy", "undefine")
# The step whose run (or revert) makes each effect.
STEP_OF = {
    "disk": "image",
    "define": "domain_create",
    "start": "domain_create",
    "destroy": "domain_create",
    "undefine": "domain_create",
}


class Recorder:
    """Appends ``<host> <instance> <build> <effect>`` lines to one file."""

    def __init__(self, host: str, path: str) -> None:
        self.host = host
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def record(self, instance: str, build: str | None, effect: str) -> None:
        os.write(self.fd, f"{self.host} {instance} {build or '-'} {effect}\n".encode())


def _xml_ids(xml: str) -> tuple[str, str | None]:
    root = etree.fromstring(xml.encode())
    found = root.find(f"metadata/{{{METADATA_NS}}}instance/{{{METADATA_NS}}}build-id")
    return root.findtext("uuid") or "", None if found is None else found.text


def _disk_owner(disk_path: str) -> tuple[str, str | None]:
    """(instance uuid, build id) of an instance's root disk: the directory is named
    after the instance, and the build claimed the disk in its marker first."""
    directory = Path(disk_path).parent
    marker = directory / DISK_MARKER
    return directory.name, marker.read_text().strip() if marker.exists() else None


def install(recorder: Recorder) -> None:
    original_define = domain.define

    @functools.wraps(original_define)
    def define(host: Any, xml: str) -> str:
        instance, build = _xml_ids(xml)
        existed = domain.exists(host, instance)
        uuid = original_define(host, xml)
        if not existed:
            recorder.record(instance, build, "define")
        return uuid

    def when_true(name: str, original: Callable[..., bool]) -> Callable[..., bool]:
        @functools.wraps(original)
        def wrapper(host: Any, uuid: str, *args: Any, **kwargs: Any) -> bool:
            build = domain.build_id(host, uuid)  # read first: undefine takes it away
            done = original(host, uuid, *args, **kwargs)
            if done:
                recorder.record(uuid, build, name)
            return done

        return wrapper

    original_create = instance_disks.create

    @functools.wraps(original_create)
    def create(base_path: str, disk_path: str, *args: Any, **kwargs: Any) -> bool:
        created = original_create(base_path, disk_path, *args, **kwargs)
        if created:
            recorder.record(*_disk_owner(disk_path), "disk")
        return created

    domain.define = define
    domain.start = when_true("start", domain.start)
    domain.destroy = when_true("destroy", domain.destroy)
    domain.undefine = when_true("undefine", domain.undefine)
    instance_disks.create = create


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--effects", required=True)
    args, rest = parser.parse_known_args()
    install(Recorder(args.host, args.effects))
    sys.exit(main([a for a in rest if a != "--"]))
