"""The build lifecycle state machine: the one table every layer asks.

    QUEUED -> RUNNING -> ACTIVE
    RUNNING -> REVERTING -> ROLLED_BACK | FAILED
    RUNNING -> INTERRUPTED -> RUNNING (resume) | REVERTING (rollback)
    REVERTING -> INTERRUPTED (a crash during rollback; recovery reverts again)
    QUEUED -> REVERTING (cancelled before it ran)

and, made only on an operator's word (``OPERATOR_TRANSITIONS``):

    FAILED -> REVERTING (``build retry``: the rollback is tried again)
    FAILED -> RESOLVED (``build resolve``: dealt with by hand)

It lives beside the event log because the log refuses any build transition
the table does not allow; the engine uses the same table to decide.

``FINAL`` is "the agent never moves it on by itself": a state with no
transition in ``TRANSITIONS``. FAILED stays final although an operator may
move it on, so recovery, ``UNFINISHED``, retention and the database's
one-unfinished-build-per-instance index never pick a FAILED build up.
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
RESOLVED = "RESOLVED"

# What the agent (or queueing) does on its own.
TRANSITIONS: dict[str | None, frozenset[str]] = {
    None: frozenset({QUEUED}),
    QUEUED: frozenset({RUNNING, REVERTING}),
    RUNNING: frozenset({ACTIVE, REVERTING, INTERRUPTED}),
    INTERRUPTED: frozenset({RUNNING, REVERTING}),
    REVERTING: frozenset({ROLLED_BACK, FAILED, INTERRUPTED}),
    ACTIVE: frozenset(),
    ROLLED_BACK: frozenset(),
    FAILED: frozenset(),
    RESOLVED: frozenset(),
}

# What only an operator's request makes happen (``spawnflow build retry|resolve``).
OPERATOR_TRANSITIONS: dict[str | None, frozenset[str]] = {
    FAILED: frozenset({REVERTING, RESOLVED}),
}

STATES = frozenset(s for s in TRANSITIONS if s is not None)
FINAL = frozenset(s for s, targets in TRANSITIONS.items() if s is not None and not targets)


def allowed(from_state: str | None) -> frozenset[str]:
    """Every state ``from_state`` may go to, by the agent or by an operator."""
    return TRANSITIONS.get(from_state, frozenset()) | OPERATOR_TRANSITIONS.get(
        from_state, frozenset()
    )


def by_operator(from_state: str | None, to_state: str) -> bool:
    """True when only an operator's request makes ``from_state -> to_state``."""
    return to_state in OPERATOR_TRANSITIONS.get(from_state, frozenset())


def check(from_state: str | None, to_state: str) -> None:
    """Raise IllegalTransition unless the table allows from_state -> to_state."""
    if to_state not in allowed(from_state):
        raise IllegalTransition(f"build transition {from_state} -> {to_state} is not allowed")


def is_final(state: str) -> bool:
    return state in FINAL
