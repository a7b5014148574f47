"""What the log says about a delete, in words: a delete build, or a spawn build it deleted.

A delete build (kind ``delete``) is DELETING, INTERRUPTED (the next start
goes on with it: a delete is never rolled back), DELETED (with what was
left because it was not the instance's own) or FAILED (what could not be
removed, the steps not reached, and ``build retry``). A spawn build that a
delete tore down is DELETED, naming that delete.
"""

from __future__ import annotations

from typing import Any

from spawnflow.history.model import BuildRecord, Diagnosis
from spawnflow.history.times import clock
from spawnflow.persistence import lifecycle


def _last(build: BuildRecord, state: str) -> dict[str, Any]:
    """The detail of the build's last transition to ``state`` ({} if none)."""
    found = [t for t in build.lifecycle if t.to_state == state]
    return (found[-1].detail or {}) if found else {}


def _removed(build: BuildRecord) -> list[str]:
    removed: list[str] = []
    for step in build.steps:
        result = step.made if isinstance(step.made, dict) else step.result
        if isinstance(result, dict):
            removed += [str(item) for item in result.get("removed") or []]
    return removed


def diagnose_delete(build: BuildRecord, tail: str) -> Diagnosis:
    """A delete build, or a spawn build deleted by one; ``tail``: the stale/dead-agent words."""
    state = build.state
    if build.kind != lifecycle.DELETE:  # a spawn build its instance's delete tore down
        by = _last(build, lifecycle.DELETED).get("deleted_by")
        at = next((t.at for t in build.lifecycle if t.to_state == lifecycle.DELETED), None)
        when = f" at {clock(at)}" if at is not None else ""
        return Diagnosis("deleted", f"DELETED: its instance was deleted by build {by}{when}")
    if state == lifecycle.DELETED:
        detail = _last(build, lifecycle.DELETED)
        left = detail.get("left") or []
        text = f"DELETED: {len(_removed(build))} thing(s) removed"
        if left:
            text += f"; left, as not the instance's own: {'; '.join(map(str, left))}"
        return Diagnosis("deleted", text)
    if state == lifecycle.FAILED:
        left = _last(build, lifecycle.FAILED).get("left") or []
        text = f"delete failed: {build.error or 'no error recorded'}"
        if left:
            text += f"; left, as not the instance's own: {'; '.join(map(str, left))}"
        text += (
            "; the steps shown REVERTED did their removals (a delete's revert does "
            f"nothing); fix the cause, then spawnflow build retry {build.build_id}"
        )
        return Diagnosis("failed", text, build.failed_step)
    if state == lifecycle.INTERRUPTED:
        steps = [s.name for s in build.current_steps]
        where = f" at step {', '.join(steps)}" if steps else ""
        return Diagnosis(
            "interrupted",
            f"delete interrupted{where}; the agent of host {build.host} goes on with it on "
            "start (a delete is never rolled back)",
            steps[0] if steps else None,
        )
    if state == lifecycle.QUEUED:
        return Diagnosis(
            "queued", f"delete queued since {clock(build.created_at)}, no step started{tail}"
        )
    steps = [s.name for s in build.current_steps]
    return Diagnosis(
        "deleting",
        f"deleting: step {', '.join(steps) or '-'}{tail}",
        steps[0] if steps else None,
    )
