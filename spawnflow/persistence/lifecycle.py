"""The build lifecycle state machine: the one table every layer asks.

    QUEUED -> RUNNING -> ACTIVE
    RUNNING -> REVERTING -> ROLLED_BACK | FAILED
    RUNNING -> INTERRUPTED -> RUNNING (resume) | REVERTING (rollback)
    REVERTING -> INTERRUPTED (a crash during rollback; recovery reverts again)
    QUEUED -> REVERTING (cancelled before it ran)

It lives beside the event log because the log refuses any build transition
the table does not allow; the engine uses the same table to decide.
"""

from __future__ import annotations

from spawnflow.exceptions import IllegalTransition

QUEUED = "QUEUED"
RUNNING = "RUNNING"
ACTIVE = "ACTIVE"
REVERTING = "REVERTING"
ROLLED_BACK = "ROLLED_BACK"
FAILED = "FAILED"
INTERRUPTED = "INTERRUPTED"

TRANSITIONS: dict[str | None, frozenset[str]] = {
    None: frozenset({QUEUED}),
    QUEUED: frozenset({RUNNING, REVERTING}),
    RUNNING: frozenset({ACTIVE, REVERTING, INTERRUPTED}),
    INTERRUPTED: frozenset({RUNNING, REVERTING}),
    REVERTING: frozenset({ROLLED_BACK, FAILED, INTERRUPTED}),
    ACTIVE: frozenset(),
    ROLLED_BACK: frozenset(),
    FAILED: frozenset(),
}

STATES = frozenset(s for s in TRANSITIONS if s is not None)
FINAL = frozenset(s for s, targets in TRANSITIONS.items() if s is not None and not targets)


def check(from_state: str | None, to_state: str) -> None:
    """Raise IllegalTransition unless the table allows from_state -> to_state."""
    if to_state not in TRANSITIONS.get(from_state, frozenset()):
        raise IllegalTransition(f"build transition {from_state} -> {to_state} is not allowed")


def is_final(state: str) -> bool:
    return state in FINAL
