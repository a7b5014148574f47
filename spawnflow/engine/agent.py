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
from pathlib import Path
from typing import Any

from oslo_config import cfg

from spawnflow import conf as sf_conf
from spawnflow.engine import log_context, log_retry, recovery
from spawnflow.engine.agent_recovery import Recovery
from spawnflow.engine.audit_verbs import AuditVerbs
from spawnflow.engine.delete_verbs import DeleteVerbs
from spawnflow.engine.events import EventHub, deliver, request_cancel
from spawnflow.engine.log_retry import unavailable
from spawnflow.engine.metrics import AgentMetrics
from spawnflow.engine.operator_verbs import OperatorVerbs
from spawnflow.engine.outcome import Outcome
from spawnflow.engine.ownership import HostLease
from spawnflow.engine.queue import ensure_logbook, queue_build
from spawnflow.engine.runner import (
    FRESH,
    Control,
    ProgressCallback,
    describe,
    run_build,
)
from spawnflow.exceptions import (
    Fenced,
    HostError,
    LogUnavailable,
    SpawnflowError,
    UnknownBuild,
)
from spawnflow.flows.context import BuildContext
from spawnflow.flows.policy import check_spec
from spawnflow.flows.spec import BuildSpec, parse_spec
from spawnflow.persistence import db, lifecycle
from spawnflow.persistence.backend import EventLogBackend
from spawnflow.persistence.eventlog import EventLog
from spawnflow.persistence.notify import QueueWaiter
from spawnflow.virt import disk_space, instance_disks
from spawnflow.virt.firewall import FirewallDriver
from spawnflow.virt.host import Host
from spawnflow.virt.images import ImageCache
from spawnflow.virt.instance_files import MARKER
from spawnflow.virt.marked_dir import clean_staging

LOG = logging.getLogger(__name__)


class Agent(Recovery, DeleteVerbs, OperatorVerbs, AuditVerbs):
    def __init__(self, conf: cfg.ConfigOpts, progress: ProgressCallback | None = None):
        self.conf = conf
        self.eventlog: EventLog | None = None
        self.recovered: dict[str, recovery.Decision] = {}
        self._futures: dict[str, concurrent.futures.Future[str]] = {}
        self._cancelled: set[str] = set()
        self._refused: set[str] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._log_lost = threading.Event()
        self._log_waits = log_retry.LogWaits(conf)
        self.metrics = AgentMetrics(conf, self._log_waits)  # engine.metrics: hooks, endpoint
        self.progress = self.metrics.progress(progress)  # times each step, then calls progress

    # -- lifecycle of the agent ---------------------------------------------------------

    def start(self) -> None:
        """Take the host lease, recover unfinished builds, then accept new ones."""
        conf = self.conf
        self.metrics.check()  # a malformed [metrics] bind is refused before anything runs
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
            self.metrics.serve(self.lease, lambda: self.eventlog)
        except BaseException:
            # Nothing runs yet: give the host back, or this process would look
            # like a live owner to the next start.
            self._executor.shutdown(wait=True, cancel_futures=True)
            self.metrics.stop()
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
        self.host = Host.from_conf(conf)
        self.instances_path = sf_conf.instances_path(conf)
        # 0711: QEMU (another user on stock Debian) must pass through to the
        # instance disks; nobody else may list which instances live here.
        Path(self.instances_path).mkdir(mode=0o711, parents=True, exist_ok=True)
        self.images = ImageCache.from_conf(conf)
        # The lease is held and no build runs yet: a half-written image download
        # or root disk can only be what a killed agent left.
        removed = self.images.clean_partial() + instance_disks.clean_partial(self.instances_path)
        if removed:
            LOG.info("removed partial files left by a crash: %s", removed)
        # The lease is held and no build runs yet: a staging instance
        # directory can only be a crash's leftover.
        staged = clean_staging(self.instances_path, MARKER)
        if staged:
            LOG.info("removed instance directories left half-made by a crash: %s", staged)
        self.firewall = FirewallDriver.load(conf.firewall.driver, host=self.host)
        self.host.guard = lambda: self._guard(None)
        self.events = EventHub(
            self._log(), cancelled=self._is_cancelled, stopping=self.lease.lost.is_set
        )
        self.queue_waiter = QueueWaiter(sf_conf.database_url(conf), conf.host)
        self._log_waits.reserve()
        self.metrics.bind()  # a port that cannot be had stops the start before builds run
        self._stopping.clear()

    @property
    def failed(self) -> str | None:
        """Why this agent cannot go on (None: it can): its lease or its log is gone."""
        if self.lease.lost.is_set():
            return f"another agent took over host {self.conf.host!r} (our lease epoch is gone)"
        if self._log_lost.is_set():
            return "the event log stayed unavailable past [database] max_retries"
        return None

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking work; return only once no thread of this agent touches the host or the log.

        Queued builds stay QUEUED; running ones stop at their next step boundary,
        and every interruptible call of a step gives way (fetch, qemu-img, event
        waits, a wait for libvirtd), leaving the step RUNNING for the next start.
        A call that cannot be interrupted gets ``timeout`` seconds (default
        [recovery] graceful_stop_timeout), then stop warns every 10 s and keeps
        waiting. Only then are deferred writes committed, the lease given back and
        the connections closed (see "Stopping an agent" in the operations guide).
        """
        if self.eventlog is None:
            return
        with self._lock:  # no build is submitted after this (see start_build)
            self._stopping.set()
        self.events.close()
        self.host.stop_waiting()
        self._executor.shutdown(wait=False, cancel_futures=True)  # queued ones stay QUEUED
        grace = self.conf.recovery.graceful_stop_timeout if timeout is None else timeout
        builds = {future: build_id for build_id, future in list(self._futures.items())}
        _done, running = concurrent.futures.wait(list(builds), timeout=grace)
        while running:
            LOG.warning(
                "stopping: build(s) %s still inside a step after %.0fs; waiting for them "
                "(every interruptible call was asked to stop)",
                ", ".join(sorted(builds[future] for future in running)),
                grace,
            )
            _done, running = concurrent.futures.wait(running, timeout=10.0)
            grace += 10.0
        self._executor.shutdown(wait=True)  # and the idle build threads end too
        try:
            self.backend.close()  # commits deferred writes before the host is given back
            self.lease.release()
        except Exception as exc:
            if not unavailable(exc):
                raise
            # The log is down: the lease is not given back (it expires, or the
            # next start finds this process gone); what was queued re-runs.
            LOG.warning("stopping without giving the host lease back: %s", db.first_line(exc))
            self.lease.abandon()
        finally:
            self.metrics.stop()
            self.queue_waiter.close()
            self.host.close()
            self.eventlog.close_quietly()
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
        short = self._disk_shortage()
        if short is not None:
            raise HostError(short)
        with self._lock:
            if self._stopping.is_set():  # stop() began since the check above
                raise SpawnflowError("agent is stopping; no new builds are accepted")
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
        """Start builds queued for this host by other processes (``spawn --no-wait``,
        ``delete --no-wait``, ``spawnflow.client``). While the disk is short only
        deletes start: they free space."""
        started: list[str] = []
        short = self._disk_shortage()
        try:
            queued = self._log().builds(host=self.conf.host, states=frozenset({lifecycle.QUEUED}))
        except Exception as exc:
            if not unavailable(exc):
                raise
            LOG.warning("cannot look for queued builds: %s", db.first_line(exc))
            return started
        if short is not None:
            if any(row.kind == lifecycle.SPAWN for row in queued):
                LOG.warning("queued builds wait: %s", short)
            queued = [row for row in queued if row.kind == lifecycle.DELETE]
        with self._lock:
            if self._stopping.is_set():
                return started
            for row in queued:
                if row.build_id not in self._futures:
                    self._submit(row.build_id, FRESH)
                    started.append(row.build_id)
        return started

    def wait_for_work(
        self, timeout: float | None = None, stop: threading.Event | None = None
    ) -> bool:
        """Block until work may be queued for this host (a NOTIFY on PostgreSQL), ``timeout``
        (default ``[DEFAULT] queue_poll_interval``) passes or ``stop`` is set; then call
        ``pick_up_queued`` and ``pick_up_requests``. True when woken by a notification."""
        interval = self.conf.queue_poll_interval if timeout is None else timeout
        return self.queue_waiter.wait(interval, stop or self._stopping)

    def _disk_shortage(self) -> str | None:
        paths = [str(self.conf.state_path), self.instances_path]
        return disk_space.shortage(paths, self.conf.min_free_disk_mb)

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
        """Run the build; while the log is unavailable, hold it, then recover it in place."""
        next_run: tuple[str, str | None] | None = (mode, reason)
        with log_context.bind(build_id):
            return self.metrics.run(build_id, self._run_until_settled, next_run, spec)

    def _run_until_settled(
        self, build_id: str, next_run: tuple[str, str | None] | None, spec: BuildSpec | None
    ) -> str:
        try:
            while next_run is not None:
                try:
                    return self._run_once(build_id, *next_run, spec)
                except Fenced as exc:
                    self.lease.lost.set()
                    LOG.error("build %s left to the host's new owner: %s", build_id, exc)
                    return lifecycle.INTERRUPTED
                except Exception as exc:
                    if self._log().fenced:
                        self.lease.lost.set()
                        LOG.error("build %s left to the host's new owner: %s", build_id, exc)
                        return lifecycle.INTERRUPTED
                    if not (unavailable(exc) or self._log().held(build_id)):
                        raise
                    why = self._log().held(build_id) or db.first_line(exc)
                    next_run = self._after_log_fault(build_id, why)
            return lifecycle.INTERRUPTED
        finally:
            self.backend.forget(build_id)
            self._log().forget_build(build_id)

    def _guard(self, build_id: str | None) -> None:
        """Raise unless this agent may still touch the host (``HostLease.guard``); a lease
        that cannot be confirmed holds the build (None: the one this thread runs),
        as a failed write does."""
        try:
            self.lease.guard()
        except LogUnavailable as exc:
            self._log().hold(build_id, exc)
            raise

    def _run_once(
        self, build_id: str, mode: str, reason: str | None, spec: BuildSpec | None
    ) -> str:
        row = self._log().get_build(build_id)
        self.metrics.began(build_id, row.kind)
        control = Control(
            cancelled=lambda: self._is_cancelled(build_id),
            stopping=lambda: self._stopping.is_set() or self.lease.lost.is_set(),
        )
        if row.kind == lifecycle.DELETE:
            return self._run_delete(row, mode, control, reason)
        # The persisted spec is redacted: a build started by this process keeps
        # the one it was given (secrets included); a recovered one has only that.
        spec = spec or BuildSpec.model_validate(row.spec)
        ensure_logbook(self.backend, build_id)
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
            guard=lambda: self._guard(build_id),
        )
        if row.state == lifecycle.QUEUED and (
            self._is_cancelled(build_id) or self._being_deleted(row)
        ):
            # Queued while its instance's delete ran, or cancelled: never run.
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
            LOG.warning("build %s stopped: %s", build_id, describe(exc))
            raise

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
