"""The agent: owns this host's builds, recovers them, runs new ones, answers waits.

    agent = Agent(spawnflow.conf.load(['--config-file', path]))
    agent.start()                           # takes the host lease, recovers, accepts work
    build_id = agent.start_build('vm.yaml')
    outcome = agent.wait(build_id)          # Outcome(state='ACTIVE', error=None)
    agent.stop()

A spec is validated before anything is written; the build's first event
carries the redacted spec; starting the same instance again while its build is
unfinished, or after it went ACTIVE, returns that build (a retry never makes a
second VM; the database allows one unfinished build per instance). Builds run
concurrently up to max_concurrent_builds, one TaskFlow engine each.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from oslo_config import cfg
from taskflow import exceptions as tf_exc
from taskflow.persistence import models

from spawnflow import conf as sf_conf
from spawnflow.engine import recovery
from spawnflow.engine.events import EventHub, deliver, request_cancel
from spawnflow.engine.outcome import Outcome
from spawnflow.engine.ownership import HostLease
from spawnflow.engine.runner import (
    FRESH,
    RESUME,
    ROLLBACK,
    Control,
    ProgressCallback,
    describe,
    run_build,
)
from spawnflow.exceptions import SpawnflowError, UnknownBuild
from spawnflow.flows.context import BuildContext
from spawnflow.flows.image import MARKER
from spawnflow.flows.policy import check_spec
from spawnflow.flows.spawn import FLOW_NAME
from spawnflow.flows.spec import BuildSpec, parse_spec
from spawnflow.persistence import lifecycle
from spawnflow.persistence.backend import EventLogBackend
from spawnflow.persistence.eventlog import EventLog
from spawnflow.virt.firewall import FirewallDriver
from spawnflow.virt.host import Host
from spawnflow.virt.images import ImageCache
from spawnflow.virt.marked_dir import clean_staging

LOG = logging.getLogger(__name__)
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


class Agent:
    def __init__(self, conf: cfg.ConfigOpts, progress: ProgressCallback | None = None):
        self.conf = conf
        self.progress = progress
        self.eventlog: EventLog | None = None
        self.recovered: dict[str, recovery.Decision] = {}
        self._futures: dict[str, concurrent.futures.Future[str]] = {}
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    # -- lifecycle of the agent ---------------------------------------------------------

    def start(self) -> None:
        """Take the host lease, recover unfinished builds, then accept new ones."""
        conf = self.conf
        self.eventlog = EventLog.open(sf_conf.database_url(conf))
        self.lease = HostLease(self.eventlog, conf.host, conf.recovery.lease_seconds)
        try:
            self.lease.acquire()
        except Exception:
            self.eventlog.close()
            self.eventlog = None
            raise
        try:
            self._start_services()
            self._recover()
        except BaseException:
            # Nothing runs yet: give the host back, or this process would look
            # like a live owner to the next start.
            self._executor.shutdown(wait=True, cancel_futures=True)
            self.lease.release()
            self.eventlog.close()
            self.eventlog = None
            raise

    def _start_services(self) -> None:
        conf = self.conf
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=conf.max_concurrent_builds, thread_name_prefix="spawnflow-build"
        )
        self.backend = EventLogBackend(eventlog=self.eventlog)
        self.host = Host(conf.libvirt.connection_uri, conf.libvirt.virt_type)
        self.instances_path = sf_conf.instances_path(conf)
        # 0711: QEMU (another user on stock Debian) must pass through to the
        # instance disks; nobody else may list which instances live here.
        Path(self.instances_path).mkdir(mode=0o711, parents=True, exist_ok=True)
        self.images = ImageCache.from_conf(conf)
        removed = self.images.clean_partial()
        if removed:
            LOG.info("removed partial image downloads left by a crash: %s", removed)
        # The lease is held and no build runs yet: a staging instance
        # directory can only be a crash's leftover.
        staged = clean_staging(self.instances_path, MARKER)
        if staged:
            LOG.info("removed instance directories left half-made by a crash: %s", staged)
        self.firewall = FirewallDriver.load(conf.firewall.driver, host=self.host)
        self.events = EventHub(self._log(), cancelled=self._is_cancelled)
        self._stopping.clear()

    def _recover(self) -> None:
        """Decide for every unfinished build first, then start them (decisions are cheap
        reads and one commit each; running builds would only slow them down)."""
        plan: list[tuple[str, str, str | None]] = []
        for row in self._log().builds(host=self.conf.host, states=UNFINISHED):
            if row.state == lifecycle.QUEUED:
                plan.append((row.build_id, FRESH, None))
                continue
            if row.state != lifecycle.INTERRUPTED:
                self._log().transition_build(
                    row.build_id,
                    lifecycle.INTERRUPTED,
                    payload={"reason": f"found {row.state} at agent start (agent died)"},
                )
            flow_detail = next(iter(self.backend.get_connection().get_logbook(row.build_id)))
            decision = recovery.decide(
                self.conf,
                row.created_at,
                flow_detail,
                cancelled=self.events.cancel_requested(row.build_id),
            )
            LOG.info(
                "build %s was interrupted: %s (%s)", row.build_id, decision.action, decision.reason
            )
            self.recovered[row.build_id] = decision
            mode = RESUME if decision.action == recovery.RESUME else ROLLBACK
            plan.append(
                (row.build_id, mode, f"recovery: {decision.action}, because {decision.reason}")
            )
        for build_id, mode, reason in plan:
            self._submit(build_id, mode, reason)

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking work; running builds stop at their next step boundary.

        Builds still inside a step after ``timeout`` seconds (default: [recovery]
        graceful_stop_timeout) are left as they are, for the next start to recover:
        then the host lease is kept (its heartbeat stops and it expires, or the
        next agent finds this process gone), so no other agent can take over a
        build that a thread of this one is still running.
        """
        if self.eventlog is None:
            return
        self._stopping.set()
        self.events.close()
        wait = self.conf.recovery.graceful_stop_timeout if timeout is None else timeout
        _done, running = concurrent.futures.wait(list(self._futures.values()), timeout=wait)
        self._executor.shutdown(wait=False, cancel_futures=True)
        if running:
            LOG.warning("%d build(s) still inside a step; leaving them for recovery", len(running))
            self.lease.abandon()
            return
        self.backend.close()  # commits deferred writes before the host is given back
        self.lease.release()
        self.host.close()
        self.eventlog.close()
        self.eventlog = None

    def __enter__(self) -> Agent:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- builds ---------------------------------------------------------------------------

    def start_build(self, spec: BuildSpec | dict[str, Any] | str | os.PathLike[str]) -> str:
        """Validate, record and queue a build; return its id at once.

        A retry gets the instance's unfinished build, or its ACTIVE one (which
        is not run again), instead of a new build (see ``queue_build``).
        """
        log = self._log()
        if self._stopping.is_set():
            raise SpawnflowError("agent is stopping; no new builds are accepted")
        spec = parse_spec(spec)
        check_spec(spec, self.conf, self.host)
        with self._lock:
            build_id, created = queue_build(log, self.backend, spec, self.conf.host)
            # Not created: an unfinished build (submitted unless already running
            # here) or the instance's ACTIVE build (returned as it is).
            if created or (
                build_id not in self._futures
                and not lifecycle.is_final(log.get_build(build_id).state)
            ):
                self._submit(build_id, FRESH, spec=spec)
        return build_id

    def pick_up_queued(self) -> list[str]:
        """Start builds queued for this host by other processes (``spawn --no-wait``)."""
        started = []
        with self._lock:
            for row in self._log().builds(
                host=self.conf.host, states=frozenset({lifecycle.QUEUED})
            ):
                if row.build_id not in self._futures:
                    self._submit(row.build_id, FRESH)
                    started.append(row.build_id)
        return started

    def _submit(
        self, build_id: str, mode: str, reason: str | None = None, spec: BuildSpec | None = None
    ) -> None:
        future = self._executor.submit(self._run, build_id, mode, reason, spec)
        self._futures[build_id] = future

        def forget_if_final(done: concurrent.futures.Future[str]) -> None:
            # A long-lived agent sees many builds: forget the finished ones
            # (wait() then reads their final state from the log).
            if (
                not done.cancelled()
                and done.exception() is None
                and lifecycle.is_final(done.result())
                and self._futures.get(build_id) is done
            ):
                self._futures.pop(build_id, None)

        future.add_done_callback(forget_if_final)

    def _run(self, build_id: str, mode: str, reason: str | None, spec: BuildSpec | None) -> str:
        row = self._log().get_build(build_id)
        # The persisted spec is redacted: a build started by this process keeps
        # the one it was given (secrets included); a recovered one has only that.
        spec = spec or BuildSpec.model_validate(row.spec)
        ensure_logbook(self.backend, build_id)
        control = Control(
            cancelled=lambda: self._is_cancelled(build_id),
            stopping=lambda: self._stopping.is_set() or self.lease.lost.is_set(),
        )
        ctx = BuildContext(
            build_id=build_id,
            spec=spec,
            conf=self.conf,
            host=self.host,
            images=self.images,
            firewall=self.firewall,
            events=self.events,
            instances_path=self.instances_path,
            cancelled=control.cancelled,
            stopping=control.stopping,
        )
        if self._is_cancelled(build_id) and row.state == lifecycle.QUEUED:
            self._log().transition_build(build_id, lifecycle.REVERTING)
            self._log().transition_build(
                build_id, lifecycle.ROLLED_BACK, error="BuildCancelled: cancelled before it started"
            )
            return lifecycle.ROLLED_BACK
        try:
            return run_build(
                ctx, self.backend, mode=mode, reason=reason, control=control, progress=self.progress
            )
        except Exception as exc:
            # Only a broken event log or libvirt connection gets here: the
            # build is left unfinished for recovery rather than mislabelled.
            LOG.exception("build %s stopped: %s", build_id, describe(exc))
            raise
        finally:
            self.backend.forget(build_id)
            self._log().forget_build(build_id)

    def wait(self, build_id: str, timeout: float | None = None) -> Outcome:
        """Block until the build reaches a final state (or ``timeout`` seconds pass)."""
        future = self._futures.get(build_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        if future is not None:
            # The outcome is read from the log below, whatever the future says.
            with contextlib.suppress(
                concurrent.futures.TimeoutError,
                concurrent.futures.CancelledError,
                SpawnflowError,
            ):
                future.result(timeout)
        else:
            # Someone else's agent runs it: follow the log.
            while not lifecycle.is_final(self._log().get_build(build_id).state):
                if deadline is not None and time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        row = self._log().get_build(build_id)
        return Outcome(build_id=build_id, state=row.state, error=row.error)

    def cancel(self, build_id: str) -> None:
        """Roll the build back from its next step boundary (persisted first)."""
        request_cancel(self._log(), build_id)
        with self._lock:
            self._cancelled.add(build_id)
        self.events.notify()

    def _is_cancelled(self, build_id: str) -> bool:
        if build_id in self._cancelled:
            return True
        if self.eventlog is not None and self.events.cancel_requested(build_id):
            with self._lock:
                self._cancelled.add(build_id)
            return True
        return False

    def deliver_event(
        self, instance_uuid: str, name: str, tag: str, status: str = "completed"
    ) -> str:
        """Persist an external event for the instance's unfinished build; return its id."""
        build_id = deliver(self._log(), instance_uuid, name, tag, status)
        self.events.notify()
        return build_id

    def _log(self) -> EventLog:
        if self.eventlog is None:
            raise SpawnflowError("agent is not started; call Agent.start() first")
        return self.eventlog


__all__ = ["Agent", "UnknownBuild", "queue_build"]
