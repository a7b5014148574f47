"""The agent's side of deleting an instance: ``Agent.delete_instance`` and the delete runs.

A mixin of ``Agent`` (as ``operator_verbs`` is). A delete is a build of kind
``delete`` (``engine.queue.queue_delete``) run by the agent that owns the
instance's host, like any build: queued, picked up, recovered after a crash
(always forward; see ``engine.delete_runner``). Its first step cancels and
rolls back the instance's unfinished spawn builds (``_settle_spawns``): a
spawn that a thread of this agent runs is cancelled and waited for; one
that no thread runs (QUEUED, or INTERRUPTED and held) is rolled back in the
delete's own thread, so a pool of one thread cannot deadlock.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import Any

from oslo_config import cfg

from spawnflow.engine import delete_runner
from spawnflow.engine.outcome import Outcome
from spawnflow.engine.ownership import HostLease
from spawnflow.engine.queue import UNFINISHED, ensure_logbook, queue_delete, unfinished_delete
from spawnflow.engine.runner import FRESH, RESUME, ROLLBACK, Control, ProgressCallback
from spawnflow.exceptions import AgentStopping, SpawnflowError
from spawnflow.flows import manifest
from spawnflow.flows.spec import BuildSpec
from spawnflow.flows.teardown import DeleteContext, Owner
from spawnflow.persistence import lifecycle
from spawnflow.persistence.backend import EventLogBackend
from spawnflow.persistence.eventlog import EventLog
from spawnflow.virt.firewall import FirewallDriver
from spawnflow.virt.host import Host

RESTART = delete_runner.RESTART
_MODES = {FRESH: delete_runner.FRESH, RESUME: delete_runner.RESUME, RESTART: RESTART}


class DeleteVerbs:
    """Delete instances on this host (see the module docstring)."""

    conf: cfg.ConfigOpts
    progress: ProgressCallback | None
    backend: EventLogBackend
    host: Host
    firewall: FirewallDriver
    instances_path: str
    lease: HostLease
    _lock: threading.Lock
    _stopping: threading.Event
    _futures: dict[str, concurrent.futures.Future[str]]

    def _log(self) -> EventLog:  # pragma: no cover - Agent's
        raise NotImplementedError

    def _submit(  # pragma: no cover - Agent's
        self, build_id: str, mode: str, reason: str | None = None, spec: BuildSpec | None = None
    ) -> None:
        raise NotImplementedError

    def _run(  # pragma: no cover - Agent's
        self, build_id: str, mode: str, reason: str | None, spec: BuildSpec | None
    ) -> str:
        raise NotImplementedError

    def _guard(self, build_id: str | None) -> None:  # pragma: no cover - Agent's
        raise NotImplementedError

    def cancel(self, build_id: str) -> None:  # pragma: no cover - Agent's
        raise NotImplementedError

    def wait(self, build_id: str, timeout: float | None = None) -> Outcome:  # pragma: no cover
        raise NotImplementedError

    def delete_instance(
        self, instance_uuid: str, timeout: float | None = None, force: bool = False
    ) -> Outcome:
        """Delete the instance from this host and wait (up to ``timeout`` s) for the outcome.

        DELETED (the payload of its last event lists what was left as not the
        instance's own) or FAILED (its error names what could not be removed);
        the delete build's state so far when ``timeout`` passed. An unfinished
        build of the instance is cancelled and rolled back first. Deleting it
        again returns the same delete. ``force`` destroys the guest at once
        instead of asking it to shut down first.
        """
        log = self._log()
        with self._lock:
            if self._stopping.is_set():
                raise SpawnflowError("agent is stopping; no new builds are accepted")
            row, _created = queue_delete(
                log, self.backend, instance_uuid, force=force, host=self.conf.host
            )
            if row.build_id not in self._futures and not lifecycle.is_final(row.state):
                self._submit(row.build_id, FRESH)
        if not lifecycle.is_final(row.state):
            # Cancelled now, not when a thread takes the delete: a running
            # build stops at its next step boundary meanwhile.
            for spawn in log.builds(instance_uuid=row.instance_uuid, kind=lifecycle.SPAWN):
                if spawn.state in UNFINISHED and spawn.host == row.host:
                    self._cancel_unless_final(spawn.build_id)
        return self.wait(row.build_id, timeout)

    def _being_deleted(self, row: Any) -> bool:
        """True when ``row`` (a spawn build) has an unfinished delete of its instance."""
        return unfinished_delete(self._log().builds(instance_uuid=row.instance_uuid)) is not None

    def _run_delete(self, row: Any, mode: str, control: Control, reason: str | None) -> str:
        ensure_logbook(self.backend, row.build_id, manifest.DELETE)  # a crash may have come first
        try:
            owners = self._owners(row)
        except ValueError as exc:  # pydantic's ValidationError is one
            return self._unreadable(row, exc)
        ctx = DeleteContext(
            build_id=row.build_id,
            instance_uuid=row.instance_uuid,
            owners=owners,
            force=bool((row.spec or {}).get("force")),
            conf=self.conf,
            host=self.host,
            firewall=self.firewall,
            instances_path=self.instances_path,
            settle=lambda: self._settle_spawns(row.instance_uuid),
            stopping=control.stopping,
            guard=lambda: self._guard(row.build_id),
        )
        return delete_runner.run_delete(
            ctx,
            self.backend,
            mode=_MODES.get(mode, RESUME),
            reason=reason,
            control=control,
            progress=self.progress,
        )

    def _owners(self, row: Any) -> list[Owner]:
        """The spawn builds ``row`` (a delete) tears down, with their persisted specs."""
        owners = []
        for build in self._log().builds(instance_uuid=row.instance_uuid, kind=lifecycle.SPAWN):
            # Only builds before the delete: a later build of the instance is
            # not this delete's to remove.
            if build.host == row.host and build.created_at <= row.created_at:
                try:
                    owners.append(Owner(build.build_id, BuildSpec.model_validate(build.spec)))
                except ValueError as exc:
                    why = f"the spec of build {build.build_id} is unreadable: {exc}"
                    raise ValueError(why) from None
        return owners

    def _unreadable(self, row: Any, exc: Exception) -> str:
        """A delete that cannot know what to remove fails, saying why (nothing touched)."""
        log = self._log()
        if log.get_build(row.build_id).state != lifecycle.DELETING:
            log.transition_build(row.build_id, lifecycle.DELETING)
        error = str(exc).splitlines()[0]
        log.transition_build(row.build_id, lifecycle.FAILED, error=error, payload={"left": []})
        return lifecycle.FAILED

    def _settle_spawns(self, instance_uuid: str) -> list[str]:
        """Cancel and roll back every unfinished spawn build of the instance; their ids."""
        settled: list[str] = []
        while True:
            if self._stopping.is_set() or self.lease.lost.is_set():
                raise AgentStopping("agent stopping while a delete waits for a rollback")
            rows = [
                r
                for r in self._log().builds(instance_uuid=instance_uuid, kind=lifecycle.SPAWN)
                if r.state in UNFINISHED and r.host == self.conf.host
            ]
            if not rows:
                return settled
            settled += [r.build_id for r in rows if r.build_id not in settled]
            self._roll_back_now(rows[0])

    def _roll_back_now(self, row: Any) -> None:
        """Roll ``row`` back: wait for the thread that runs it, or run it in this one."""
        build_id = row.build_id
        placeholder: concurrent.futures.Future[str] = concurrent.futures.Future()
        with self._lock:
            running = self._futures.get(build_id)
            if running is not None and (running.done() or running.cancel()):
                running = None  # ended, or was still waiting for a thread
            if running is None:
                placeholder.set_running_or_notify_cancel()
                self._futures[build_id] = placeholder
        try:
            if not self._cancel_unless_final(build_id):
                return  # it ended meanwhile: settled
            if running is not None:
                while not running.done():
                    if self._stopping.is_set() or self.lease.lost.is_set():
                        raise AgentStopping("agent stopping while a delete waits for a rollback")
                    time.sleep(0.2)
                return
            state = self._log().get_build(build_id).state  # now, not when listed
            mode = FRESH if state == lifecycle.QUEUED else ROLLBACK
            placeholder.set_result(self._run(build_id, mode, "its instance is being deleted", None))
        except BaseException as exc:
            if not placeholder.done() and placeholder.running():
                placeholder.set_exception(exc)
            raise
        finally:
            if not placeholder.done() and placeholder.running():
                placeholder.set_result(self._log().get_build(build_id).state)
            with self._lock:
                if self._futures.get(build_id) is placeholder:
                    del self._futures[build_id]

    def _cancel_unless_final(self, build_id: str) -> bool:
        """Persist a cancel of the build (as any cancel); False if it is final already."""
        try:
            self.cancel(build_id)
        except SpawnflowError:
            if lifecycle.is_final(self._log().get_build(build_id).state):
                return False
            raise
        return True


__all__ = ["DeleteVerbs"]
