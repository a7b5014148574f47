"""Recording a build as QUEUED for a host: one unfinished build per instance.

Used by ``Agent.start_build``, by ``spawnflow spawn --no-wait`` (through the
admin API) and by anything else that queues builds for an agent to pick up.
"""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from taskflow import exceptions as tf_exc
from taskflow.persistence import models

from spawnflow.exceptions import DeleteRefused, InvalidSpec, SpawnflowError
from spawnflow.flows.manifest import DELETE, SPAWN, delete_flow_version, spawn_flow_version
from spawnflow.flows.spec import BuildSpec
from spawnflow.persistence import lifecycle
from spawnflow.persistence.backend import EventLogBackend
from spawnflow.persistence.eventlog import EventLog

UNFINISHED = lifecycle.STATES - lifecycle.FINAL
# Spawn builds that left nothing on the host (as far as the log knows).
GONE = frozenset({lifecycle.ROLLED_BACK, lifecycle.DELETED})


HOST_MAX = 255  # builds.host


def check_host(host: Any) -> str:
    """``host`` as a host to queue for, or InvalidSpec naming the field."""
    if not isinstance(host, str) or not host.strip() or len(host) > HOST_MAX:
        raise InvalidSpec(f"host: {host!r} is not a host name (1 to {HOST_MAX} characters)")
    if not host.isprintable() or host != host.strip():
        raise InvalidSpec(f"host: {host!r} holds spaces or characters that cannot be printed")
    return host


def queue_build(
    eventlog: EventLog, backend: EventLogBackend, spec: BuildSpec, host: str
) -> tuple[str, bool]:
    """Record a build as QUEUED for ``host`` (its logbook too); return (id, created).

    A retry never makes a second VM: the instance's unfinished build is returned
    instead of a new one, and so is its latest build when that one is ACTIVE (the
    VM exists; a second build would only fail at domain_create). A latest build
    that ROLLED_BACK or FAILED allows a new one. An unfinished or ACTIVE build
    on another host is an error. The database allows one unfinished build per
    instance (a partial unique index), so of several processes starting one
    instance at once, one inserts and every other gets the winner's build.
    Used by ``Agent.start_build`` and by ``spawnflow spawn --no-wait``.
    """
    instance = spec.instance.uuid
    for _attempt in range(5):
        existing = _current_build(eventlog, instance)
        if existing is not None:
            if existing.host != host:
                doing = "is being built" if existing.state in UNFINISHED else f"is {existing.state}"
                raise SpawnflowError(
                    f"instance {instance} {doing} on host {existing.host} "
                    f"(build {existing.build_id})"
                )
            return existing.build_id, False
        build_id = str(uuid.uuid4())
        try:
            eventlog.create_build(
                build_id,
                instance_uuid=instance,
                instance_name=spec.instance.name,
                host=host,
                spec=spec.redacted(),
                flow_version=spawn_flow_version(),
            )
        except sa.exc.IntegrityError:
            # Another process inserted this instance's unfinished build first:
            # look again (it may even have finished meanwhile).
            eventlog.forget_build(build_id)
            continue
        ensure_logbook(backend, build_id)
        return build_id, True
    raise SpawnflowError(
        f"instance {instance}: could not record a build (its builds kept "
        "changing under concurrent starts); try again"
    )


def _current_build(eventlog: EventLog, instance_uuid: str) -> Any:
    """The build a start of ``instance_uuid`` must return: its unfinished one, else its
    latest when that is ACTIVE; None when a new build may start. Raises while the
    instance is being deleted."""
    builds = eventlog.builds(instance_uuid=instance_uuid)
    deleting = unfinished_delete(builds)
    if deleting is not None:
        raise SpawnflowError(
            f"instance {instance_uuid} is being deleted (build {deleting.build_id}, "
            f"{deleting.state}); start it again once that delete is DELETED"
        )
    failed = failed_delete(builds)
    if failed is not None:
        raise SpawnflowError(
            f"instance {instance_uuid}: its delete {failed.build_id} FAILED and left it "
            f"half torn down; spawnflow build retry {failed.build_id} (or build resolve "
            "it) first"
        )
    builds = [row for row in builds if row.kind == lifecycle.SPAWN]
    unfinished = [row for row in builds if row.state in UNFINISHED]
    if unfinished:
        return unfinished[-1]
    if builds:
        latest = max(builds, key=lambda row: (row.created_at, row.build_id))
        if latest.state == lifecycle.ACTIVE:
            return latest
    return None


def failed_delete(builds: list[Any]) -> Any:
    """The instance's last delete when it FAILED after its last spawn build, or None."""
    last = builds[-1] if builds else None
    deletes = [row for row in builds if row.kind == lifecycle.DELETE]
    if deletes and deletes[-1].state == lifecycle.FAILED and deletes[-1] is last:
        return last
    return None


def newer_builds(log_builds: list[Any], row: Any) -> list[Any]:
    """The builds of ``row``'s instance queued after it that are not gone (see GONE)."""
    return [
        other
        for other in log_builds
        if other.build_id != row.build_id
        and other.created_at > row.created_at
        and not (other.kind == lifecycle.SPAWN and other.state in GONE)
    ]


def unfinished_delete(builds: list[Any]) -> Any:
    """The unfinished delete build among an instance's ``builds`` rows, or None."""
    return next(
        (row for row in builds if row.kind == lifecycle.DELETE and row.state in UNFINISHED),
        None,
    )


def parse_instance_uuid(text: str) -> str:
    """``text`` as an instance uuid (canonical form); DeleteRefused naming it if it is not one."""
    try:
        return str(uuid.UUID(str(text)))
    except ValueError:
        raise DeleteRefused(f"instance: {text!r} is not a UUID") from None


def queue_delete(
    eventlog: EventLog,
    backend: EventLogBackend,
    instance_uuid: str,
    force: bool = False,
    host: str | None = None,
) -> tuple[Any, bool]:
    """Record a delete of ``instance_uuid`` as QUEUED on its host; return (row, created).

    The host is the one its newest build that left something ran on (after a
    build FAILED on one host and the next went ACTIVE on another, deleting
    twice cleans both). Instead of a second delete, the instance's unfinished
    delete is returned, and so is its last delete when that one FAILED (retry
    or resolve it: a second delete beside it would leave it retryable against
    a later build) or when nothing of the instance is left. An instance with
    no build in this log is refused: nothing says what is its. ``host``:
    refused unless the delete would run there (an agent deletes only its own).
    """
    instance_uuid = parse_instance_uuid(instance_uuid)
    for _attempt in range(5):
        builds = eventlog.builds(instance_uuid=instance_uuid)
        spawns = [row for row in builds if row.kind == lifecycle.SPAWN]
        if not spawns:
            raise DeleteRefused(f"instance {instance_uuid} has no build in this database")
        deleting = unfinished_delete(builds)
        if deleting is not None:
            return deleting, False
        live = [row for row in spawns if row.state not in GONE]
        deletes = [row for row in builds if row.kind == lifecycle.DELETE]
        if deletes and (not live or deletes[-1].state == lifecycle.FAILED):
            return deletes[-1], False
        latest = live[-1] if live else spawns[-1]
        if host is not None and latest.host != host:
            raise DeleteRefused(
                f"instance {instance_uuid} lives on host {latest.host}, not {host}: its "
                "agent deletes it (spawnflow delete --no-wait queues the delete there)"
            )
        build_id = str(uuid.uuid4())
        spec = {
            "instance": {"uuid": instance_uuid, "name": latest.instance_name},
            "builds": [row.build_id for row in live if row.host == latest.host],
            "force": bool(force),
        }
        try:
            eventlog.create_build(
                build_id,
                instance_uuid=instance_uuid,
                instance_name=latest.instance_name,
                host=latest.host,
                spec=spec,
                flow_version=delete_flow_version(),
                kind=lifecycle.DELETE,
            )
        except sa.exc.IntegrityError:
            eventlog.forget_build(build_id)  # another delete of it came first
            continue
        ensure_logbook(backend, build_id, DELETE)
        return eventlog.get_build(build_id), True
    raise SpawnflowError(f"instance {instance_uuid}: could not record its delete; try again")


def ensure_logbook(backend: EventLogBackend, build_id: str, flow_name: str = SPAWN) -> None:
    """The build's TaskFlow logbook (uuid = build id), made if a crash came first."""
    conn = backend.get_connection()
    try:
        conn.get_logbook(build_id, lazy=True)
    except tf_exc.NotFound:
        book = models.LogBook(f"build-{build_id}", uuid=build_id)
        book.add(models.FlowDetail(flow_name, uuid=str(uuid.uuid4())))
        conn.save_logbook(book)
