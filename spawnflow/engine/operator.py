"""Operator verbs on a build: retry a failed rollback, resolve by hand, roll back now.

    spawnflow build retry BUILD [--note TEXT]      FAILED -> REVERTING -> ...
    spawnflow build resolve BUILD --note TEXT      FAILED -> RESOLVED
    spawnflow build rollback BUILD [--note TEXT]   (like build cancel)

Each is recorded in the build's history with who asked (the login user, and
``SUDO_USER`` when set) and the operator's note, redacted like every payload.
A retry and a rollback touch the host, so only the agent that owns the host
may carry them out: the request is persisted as an external event and that
agent picks it up (``Agent.pick_up_requests``), as it does a cancel. A resolve
touches nothing on the host: it is written here, at once.

A retry request is pending while it is newer than the build's last lifecycle
event: once the agent moves the build FAILED -> REVERTING, it is spent.
"""

from __future__ import annotations

import getpass
import logging
import os
from typing import Any

import sqlalchemy as sa
from taskflow import states as tf_states

from spawnflow.engine.queue import newer_builds
from spawnflow.exceptions import SpawnflowError
from spawnflow.persistence import lifecycle, transitions
from spawnflow.persistence import tables as t
from spawnflow.persistence.backend import EventLogBackend
from spawnflow.persistence.eventlog import EXTERNAL, EventLog
from spawnflow.persistence.recovery_rules import CANCEL_REQUESTED

LOG = logging.getLogger(__name__)

RETRY_REQUESTED = "retry-requested"
ROLLBACK_REQUESTED = CANCEL_REQUESTED  # a rollback is today's cancel, under its own verb
REQUESTED = "requested"
NOTE_MAX = 1000


def who() -> dict[str, str]:
    """Who runs this command: the login user, and the user sudo ran it for."""
    try:
        user = getpass.getuser()
    except Exception:  # no name for the uid (a container): say the uid
        user = f"uid {os.getuid()}"
    found = {"user": user}
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user:
        found["sudo_user"] = sudo_user
    return found


def _note(note: str | None, required: bool = False) -> str | None:
    text = " ".join((note or "").split())
    if required and not text:
        raise SpawnflowError("a note is required (--note TEXT): say why, for the history")
    if len(text) > NOTE_MAX:
        raise SpawnflowError(f"the note is too long ({len(text)} > {NOTE_MAX} characters)")
    return text or None


def _payload(verb: str, note: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"operator": verb, **who()}
    if note:
        body["note"] = note
    return body


def _record(log: EventLog, row: Any, name: str, body: dict[str, Any]) -> None:
    with log.transaction(row.build_id, from_outside=True) as conn:
        EventLog.append(
            conn,
            kind=EXTERNAL,
            build_id=row.build_id,
            subject=row.build_id,
            name=name,
            to_state=REQUESTED,
            payload=body,
        )


def request_retry(log: EventLog, build_id: str, note: str | None = None) -> Any:
    """Persist a retry of a FAILED build's rollback; return the build's row."""
    note = _note(note)
    row = log.get_build(build_id)
    if row.state != lifecycle.FAILED:
        raise SpawnflowError(
            f"build {row.build_id} is {row.state}: only a FAILED build can be retried"
        )
    refuse_if_instance_busy(log, row)
    _record(log, row, RETRY_REQUESTED, _payload("retry", note))
    return row


def refuse_if_instance_busy(log: EventLog, row: Any) -> None:
    """A retry makes the build unfinished again: refused while another build of its
    instance is unfinished (the database allows one per instance), and once a later
    build of the instance exists that left something: the instance directory is
    shared by its builds, and a later VM must not be torn down by an old delete."""
    builds = log.builds(instance_uuid=row.instance_uuid)
    for other in builds:
        if other.build_id != row.build_id and not lifecycle.is_final(other.state):
            raise SpawnflowError(
                f"build {row.build_id}: instance {row.instance_uuid} has an unfinished "
                f"build {other.build_id} ({other.state}); retry this one once "
                "that one has finished"
            )
    newer = newer_builds(builds, row)
    if newer:
        raise SpawnflowError(
            f"build {row.build_id}: instance {row.instance_uuid} has a later build "
            f"{newer[-1].build_id} ({newer[-1].state}); retrying this older one could "
            "remove what that one uses: delete the instance (spawnflow delete), or "
            "build resolve this one"
        )


def refuse_if_delete(row: Any) -> None:
    """A delete is never cancelled or rolled back: it goes on until it is DELETED."""
    if row.kind == lifecycle.DELETE:
        raise SpawnflowError(
            f"build {row.build_id} is a delete ({row.state}): a delete is never cancelled "
            "or rolled back, it goes on until the instance is gone (a FAILED delete: "
            "build retry)"
        )


def request_rollback(log: EventLog, build_id: str, note: str | None = None) -> Any:
    """Persist a rollback (a cancel) of an unfinished build; return the build's row."""
    note = _note(note)
    row = log.get_build(build_id)
    refuse_if_delete(row)
    if lifecycle.is_final(row.state):
        hint = " (use build retry or build resolve)" if row.state == lifecycle.FAILED else ""
        raise SpawnflowError(
            f"build {row.build_id} is already {row.state}: nothing to roll back{hint}"
        )
    _record(log, row, ROLLBACK_REQUESTED, _payload("rollback", note))
    return row


def resolve(log: EventLog, build_id: str, note: str) -> Any:
    """Move a FAILED build to RESOLVED (the operator dealt with it by hand); return its row."""
    text = _note(note, required=True)
    row = log.get_build(build_id)
    if row.state != lifecycle.FAILED:
        raise SpawnflowError(
            f"build {row.build_id} is {row.state}: only a FAILED build can be resolved"
        )
    log.transition_build(row.build_id, lifecycle.RESOLVED, payload=_payload("resolve", text))
    return log.get_build(row.build_id)


def _latest_requests(log: EventLog, build_ids: list[str], name: str) -> dict[str, Any]:
    """The newest ``name`` request event of each build (seq and payload)."""
    if not build_ids:
        return {}
    query = (
        sa.select(t.events.c.build_id, t.events.c.seq, t.events.c.payload)
        .where(t.events.c.kind == EXTERNAL, t.events.c.name == name)
        .where(t.events.c.build_id.in_(build_ids))
        .order_by(t.events.c.seq)
    )
    with log.engine.connect() as conn:
        return {row.build_id: row for row in conn.execute(query)}


def pending_retries(log: EventLog, host: str) -> list[str]:
    """FAILED builds of ``host`` whose newest retry request is not spent yet."""
    failed = log.builds(host=host, states=frozenset({lifecycle.FAILED}))
    latest = _latest_requests(log, [r.build_id for r in failed], RETRY_REQUESTED)
    return [
        r.build_id for r in failed if r.build_id in latest and latest[r.build_id].seq > r.last_seq
    ]


def pending_rollbacks(log: EventLog, host: str) -> list[str]:
    """INTERRUPTED builds of ``host`` an operator asked to roll back (held ones, say)."""
    held = log.builds(host=host, states=frozenset({lifecycle.INTERRUPTED}), kind=lifecycle.SPAWN)
    latest = _latest_requests(log, [r.build_id for r in held], ROLLBACK_REQUESTED)
    return [r.build_id for r in held if r.build_id in latest]


def begin_retry(log: EventLog, backend: EventLogBackend, build_id: str) -> bool:
    """Make a FAILED build's rollback runnable again, then move it FAILED -> REVERTING
    (a FAILED delete: FAILED -> DELETING, and the agent runs every step again).

    A step whose revert failed is REVERT_FAILURE, which TaskFlow never leaves:
    it is set back to the state its revert started from, SUCCESS or FAILURE
    (an override, recorded with who asked), so the engine reverts it again.
    The steps before it are still to revert; the steps after it already are. The
    override comes first: a crash between the two leaves the build FAILED
    with its request pending, and the next pick-up does the rest. False: the
    build is no longer FAILED (resolved meanwhile), nothing was done.
    """
    row = log.get_build(build_id)
    if row.state != lifecycle.FAILED:
        return False
    refuse_if_instance_busy(log, row)
    latest = _latest_requests(log, [build_id], RETRY_REQUESTED).get(build_id)
    request = dict(latest.payload or {}) if latest is not None else {}
    by = request.get("sudo_user") or request.get("user") or "an operator"
    reason = f"operator retry by {by}"
    body = {
        key: request[key] for key in ("operator", "user", "sudo_user", "note") if key in request
    }
    if row.kind == lifecycle.DELETE:
        # A delete's steps revert nothing: the agent runs them all again.
        body["reason"] = "delete retried by an operator"
        log.transition_build(build_id, lifecycle.DELETING, payload=body)
        LOG.info("delete %s: %s", build_id, reason)
        return True
    conn = backend.get_connection()
    flow_detail = next(iter(conn.get_logbook(build_id)))
    with transitions.overrides(reason[: transitions.REASON_LEN]):
        for atom in flow_detail:
            if atom.state == tf_states.REVERT_FAILURE:
                # Back to where its revert started from (it ran, or it failed):
                # the engine then reverts it as any other step, notifications
                # and history spans included.
                atom.state = tf_states.FAILURE if atom.failure else tf_states.SUCCESS
                atom.intention = tf_states.REVERT
                conn.update_atom_details(atom)
    body["reason"] = "rollback retried by an operator"
    log.transition_build(build_id, lifecycle.REVERTING, payload=body)
    LOG.info("build %s: %s", build_id, reason)
    return True


__all__ = [
    "RETRY_REQUESTED",
    "ROLLBACK_REQUESTED",
    "begin_retry",
    "pending_retries",
    "pending_rollbacks",
    "request_retry",
    "request_rollback",
    "resolve",
    "who",
]
