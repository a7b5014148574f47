"""The operator's admin API: what a shell does to builds without running an agent.

Queue a build for this host's agent, cancel a build, ask for an operator
verb on one (retry its rollback, resolve it, roll it back), deliver an
external event, upgrade or inspect the database schema. ``Agent`` runs builds and
``spawnflow.history`` reads them; these are the few writes in between that a
short-lived process (``spawnflow spawn --no-wait``, ``build cancel``, ``event
deliver``, ``db upgrade|current``) makes. Each call opens what it needs and
closes it before it returns, so the caller holds no connection.

Every database these calls name is shown masked (``mask_url``): no password,
query or fragment is ever printed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from oslo_config import cfg

from spawnflow import conf as sf_conf
from spawnflow.engine import agent, events, operator, queue
from spawnflow.engine.queue import check_host, parse_instance_uuid
from spawnflow.exceptions import PersistenceError
from spawnflow.flows.policy import check_queueable, check_spec
from spawnflow.flows.spawn import flow_version
from spawnflow.flows.spec import BuildSpec, parse_spec
from spawnflow.persistence import lifecycle
from spawnflow.persistence.backend import EventLogBackend
from spawnflow.persistence.db import head_revision, inspect_url, open_engine
from spawnflow.persistence.eventlog import EventLog
from spawnflow.persistence.redact import mask_url
from spawnflow.virt.host import Host

EVENT_STATUSES = events.STATUSES
"""The statuses ``deliver_event`` accepts (``completed``, ``failed``)."""


@dataclass(frozen=True)
class QueuedBuild:
    """What ``queue_build`` found or made for an instance."""

    build_id: str
    instance_uuid: str
    host: str
    created: bool  # False: the instance's unfinished or ACTIVE build was returned
    state: str | None  # the returned build's state; None when created

    @property
    def already_active(self) -> bool:
        """The instance's VM exists (its latest build is ACTIVE): nothing was queued."""
        return self.state == lifecycle.ACTIVE


@dataclass(frozen=True)
class CancelRequest:
    """A persisted cancel: the build's owning agent rolls it back."""

    build_id: str
    host: str  # of the agent that acts on it


@dataclass(frozen=True)
class SchemaRevision:
    """The schema revision of an event log database."""

    database: str  # its URL, masked
    current: str | None  # None: an empty database
    head: str  # the newest revision this code knows


def queue_build(
    conf: cfg.ConfigOpts,
    spec: BuildSpec | dict[str, Any] | str | os.PathLike[str],
    host: str | None = None,
) -> QueuedBuild:
    """Record a build as QUEUED for the agent of ``host`` (default: this host) to run.

    For this host the spec is validated and checked against what the operator
    allows (and against what a queued build can fetch: ``check_queueable``)
    before anything is written. For another host (placement from anywhere,
    as ``spawnflow.client`` does) only its shape is checked here: that host's
    agent holds its allow lists, and its steps check the spec against them
    before they touch anything. A retry returns the instance's unfinished or
    ACTIVE build instead of a new one (``Agent.start_build`` does the same).
    """
    spec = parse_spec(spec)
    target = conf.host if host is None else check_host(host)
    if target == conf.host:
        with contextlib.closing(Host.from_conf(conf)) as local:
            check_spec(spec, conf, local)
        check_queueable(spec, conf)
    with (
        EventLog.open(sf_conf.database_url(conf)) as log,
        contextlib.closing(EventLogBackend(eventlog=log)) as backend,
    ):
        build_id, created = agent.queue_build(log, backend, spec, target)
        state = None if created else log.get_build(build_id).state
    return QueuedBuild(build_id, spec.instance.uuid, target, created, state)


@dataclass(frozen=True)
class QueuedDelete:
    """What ``queue_delete`` found or made for an instance."""

    build_id: str  # of the delete build
    instance_uuid: str
    host: str  # whose agent runs it: the instance's
    created: bool  # False: its unfinished delete, or the one that deleted it, was returned
    state: str


def queue_delete(conf: cfg.ConfigOpts, instance_uuid: str, force: bool = False) -> QueuedDelete:
    """Record a delete of ``instance_uuid`` as QUEUED for the agent of its host.

    The host is the one its builds ran on, whichever host this is (the
    instance's agent picks the delete up). An instance with no build in the
    log is refused; an instance being deleted, or deleted, returns that delete.
    """
    instance_uuid = parse_instance_uuid(instance_uuid)
    with (
        EventLog.open(sf_conf.database_url(conf)) as log,
        contextlib.closing(EventLogBackend(eventlog=log)) as backend,
    ):
        row, created = queue.queue_delete(log, backend, instance_uuid, force=force)
    return QueuedDelete(row.build_id, instance_uuid, row.host, created, row.state)


def cancel_build(db_url: str, build_id: str) -> CancelRequest:
    """Ask the owning agent to roll ``build_id`` back from its next step boundary.

    The request is persisted first; the agent that owns the build (in this or
    another process) reads it from the log. A build already final is refused.
    """
    # upgrade=False here and below: a mistyped URL is refused instead of becoming a
    # new database.
    with EventLog.open(db_url, upgrade=False) as log:
        row = events.request_cancel(log, build_id)
    return CancelRequest(row.build_id, row.host)


@dataclass(frozen=True)
class OperatorRequest:
    """An operator verb recorded for a build (``build retry|resolve|rollback``)."""

    build_id: str
    host: str  # of the agent that carries it out (none needed for a resolve)
    state: str  # the build's state once the request was recorded


def retry_build(db_url: str, build_id: str, note: str | None = None) -> OperatorRequest:
    """Ask the owning agent to retry a FAILED build's rollback from where it failed.

    Only a FAILED build is accepted; the request carries ``note`` and who asked.
    """
    with EventLog.open(db_url, upgrade=False) as log:
        row = operator.request_retry(log, build_id, note)
    return OperatorRequest(row.build_id, row.host, row.state)


def resolve_build(db_url: str, build_id: str, note: str) -> OperatorRequest:
    """Move a FAILED build to RESOLVED at once (dealt with by hand; ``note`` required).

    No agent is needed: nothing on the host is touched, only the log.
    """
    with EventLog.open(db_url, upgrade=False) as log:
        row = operator.resolve(log, build_id, note)
    return OperatorRequest(row.build_id, row.host, row.state)


def rollback_build(db_url: str, build_id: str, note: str | None = None) -> OperatorRequest:
    """Ask the owning agent to roll a RUNNING, QUEUED or INTERRUPTED build back now.

    ``cancel_build`` with a note and who asked; a held INTERRUPTED build is
    rolled back by its running agent too. A final build is refused.
    """
    with EventLog.open(db_url, upgrade=False) as log:
        row = operator.request_rollback(log, build_id, note)
    return OperatorRequest(row.build_id, row.host, row.state)


def deliver_event(
    db_url: str, instance_uuid: str, name: str, tag: str, status: str = "completed"
) -> str:
    """Persist an external event for the instance's unfinished build; return its id.

    The agent running that build reads it from the log (within a second), so
    this works from any process, like ``Agent.deliver_event``.
    """
    with EventLog.open(db_url, upgrade=False) as log:
        return events.deliver(log, instance_uuid, name, tag, status)


@contextlib.contextmanager
def _named(db_url: str) -> Iterator[None]:
    """A malformed URL is refused showing it masked (SQLAlchemy's own error does not
    say which URL, and must not print it whole)."""
    try:
        yield
    except sa.exc.ArgumentError as exc:
        raise PersistenceError(f"not a database URL: {mask_url(db_url)} ({exc})") from None


def upgrade_database(db_url: str) -> SchemaRevision:
    """Create or upgrade the event log schema at ``db_url`` to the newest revision."""
    with _named(db_url):
        open_engine(db_url).dispose()
    head = head_revision()
    return SchemaRevision(mask_url(db_url), head, head)


def database_revision(db_url: str) -> SchemaRevision:
    """The schema revision at ``db_url``, read without changing anything."""
    with _named(db_url):
        current = inspect_url(db_url)
    return SchemaRevision(mask_url(db_url), current, head_revision())


def running_flow_version() -> str:
    """The flow version this code runs (``flows.spawn.flow_version``), for diagnoses."""
    return flow_version()


__all__ = [
    "EVENT_STATUSES",
    "CancelRequest",
    "OperatorRequest",
    "QueuedBuild",
    "SchemaRevision",
    "cancel_build",
    "database_revision",
    "deliver_event",
    "queue_build",
    "resolve_build",
    "retry_build",
    "rollback_build",
    "running_flow_version",
    "upgrade_database",
]
