"""The agent: accepts builds, runs each on its own TaskFlow engine, answers waits.

    agent = Agent(spawnflow.conf.load(['--config-file', path]))
    agent.start()
    build_id = agent.start_build('vm.yaml')
    outcome = agent.wait(build_id)          # Outcome(state='ACTIVE', error=None)
    agent.stop()

A spec is validated before anything is written; the build's first event
carries the redacted spec; starting the same instance again while its build is
unfinished returns that build (a retry never makes a second VM).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import uuid
from typing import Any

from oslo_config import cfg
from taskflow.persistence import models

from spawnflow import conf as sf_conf
from spawnflow.engine.events import EventHub, deliver
from spawnflow.engine.outcome import Outcome
from spawnflow.engine.runner import ProgressCallback, describe, run_build
from spawnflow.exceptions import SpawnflowError
from spawnflow.flows.context import BuildContext
from spawnflow.flows.spawn import FLOW_NAME
from spawnflow.flows.spec import BuildSpec, parse_spec
from spawnflow.persistence import lifecycle
from spawnflow.persistence.backend import EventLogBackend
from spawnflow.persistence.eventlog import EventLog
from spawnflow.virt.firewall import get_firewall
from spawnflow.virt.host import Host
from spawnflow.virt.images import ImageCache

LOG = logging.getLogger(__name__)
UNFINISHED = lifecycle.STATES - lifecycle.FINAL


class Agent:
    def __init__(self, conf: cfg.ConfigOpts, progress: ProgressCallback | None = None):
        self.conf = conf
        self.progress = progress
        self.eventlog: EventLog | None = None
        self._futures: dict[str, concurrent.futures.Future] = {}
        self._lock = threading.Lock()

    # -- lifecycle of the agent ---------------------------------------------------------

    def start(self) -> None:
        conf = self.conf
        self.eventlog = EventLog.open(sf_conf.database_url(conf))
        self.backend = EventLogBackend(eventlog=self.eventlog)
        self.host = Host(conf.libvirt.connection_uri, conf.libvirt.virt_type)
        instances = sf_conf.instances_path(conf)
        os.makedirs(instances, exist_ok=True)
        self.instances_path = instances
        self.images = ImageCache(os.path.join(instances, "_base"),
                                 os.path.join(conf.state_path, "locks"))
        removed = self.images.clean_partial()
        if removed:
            LOG.info("removed partial image downloads left by a crash: %s", removed)
        self.firewall = get_firewall(conf.firewall.driver, self.host)
        self.events = EventHub(self.eventlog)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=conf.max_concurrent_builds, thread_name_prefix="spawnflow-build")

    def stop(self) -> None:
        if self.eventlog is None:
            return
        self.events.close()
        self._executor.shutdown(wait=True)
        self.host.close()
        self.eventlog.close()
        self.eventlog = None

    def __enter__(self) -> Agent:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- builds ---------------------------------------------------------------------------

    def start_build(self, spec: BuildSpec | dict | str | os.PathLike) -> str:
        """Validate, record and queue a build; return its id at once."""
        log = self._log()
        spec = parse_spec(spec)
        with self._lock:
            existing = log.builds(instance_uuid=spec.instance.uuid, states=UNFINISHED)
            if existing:
                return existing[-1].build_id
            build_id = str(uuid.uuid4())
            log.create_build(build_id, instance_uuid=spec.instance.uuid,
                             instance_name=spec.instance.name, host=self.conf.host,
                             spec=spec.redacted())
            book = models.LogBook(f"build-{build_id}", uuid=build_id)
            book.add(models.FlowDetail(FLOW_NAME, uuid=str(uuid.uuid4())))
            self.backend.get_connection().save_logbook(book)
            self._futures[build_id] = self._executor.submit(self._run, build_id, spec)
        return build_id

    def _run(self, build_id: str, spec: BuildSpec) -> str:
        ctx = BuildContext(build_id=build_id, spec=spec, conf=self.conf, host=self.host,
                           images=self.images, firewall=self.firewall, events=self.events,
                           instances_path=self.instances_path)
        try:
            return run_build(ctx, self.backend, self.progress)
        except Exception as exc:
            # Only a broken event log or libvirt connection gets here: the
            # build is left unfinished for recovery rather than mislabelled.
            LOG.exception("build %s stopped: %s", build_id, describe(exc))
            raise

    def wait(self, build_id: str, timeout: float | None = None) -> Outcome:
        """Block until the build reaches a final state (or ``timeout`` seconds pass)."""
        future = self._futures.get(build_id)
        if future is not None:
            try:
                future.result(timeout)
            except concurrent.futures.TimeoutError:
                pass
            except SpawnflowError:
                pass
        row = self._log().get_build(build_id)
        return Outcome(build_id=build_id, state=row.state, error=row.error)

    def deliver_event(self, instance_uuid: str, name: str, tag: str,
                      status: str = "completed") -> str:
        """Persist an external event for the instance's unfinished build; return its id."""
        build_id = deliver(self._log(), instance_uuid, name, tag, status)
        self.events.notify()
        return build_id

    def _log(self) -> EventLog:
        if self.eventlog is None:
            raise SpawnflowError("agent is not started; call Agent.start() first")
        return self.eventlog
