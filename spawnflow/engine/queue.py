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

from spawnflow.exceptions import SpawnflowError
from spawnflow.flows.spawn import FLOW_NAME, flow_version
from spawnflow.flows.spec import BuildSpec
from spawnflow.persistence import lifecycle
from spawnflow.persistence.backend import EventLogBackend
from spawnflow.persistence.eventlog import EventLog

UNFINISHED = lifecycle.STATES - lifecycle.FINAL


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
                flow_version=flow_version(),
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
    latest when that is ACTIVE; None when a new build may start."""
    builds = eventlog.builds(instance_uuid=instance_uuid)
    unfinished = [row for row in builds if row.state in UNFINISHED]
    if unfinished:
        return unfinished[-1]
    if builds:
        latest = max(builds, key=lambda row: (row.created_at, row.build_id))
        if latest.state == lifecycle.ACTIVE:
            return latest
    return None


def ensure_logbook(backend: EventLogBackend, build_id: str) -> None:
    """The build's TaskFlow logbook (uuid = build id), made if a crash came first."""
    conn = backend.get_connection()
    try:
        conn.get_logbook(build_id, lazy=True)
    except tf_exc.NotFound:
        book = models.LogBook(f"build-{build_id}", uuid=build_id)
        book.add(models.FlowDetail(FLOW_NAME, uuid=str(uuid.uuid4())))
        conn.save_logbook(book)
