"""The build lifecycle state machine: the one table every layer asks.

A build is of one of two kinds. A *spawn* build makes an instance:

    QUEUED -> RUNNING -> ACTIVE
    RUNNING -> REVERTING -> ROLLED_BACK | FAILED
    RUNNING -> INTERRUPTED -> RUNNING (resume) | REVERTING (rollback)
    REVERTING -> INTERRUPTED (a crash during rollback; recovery reverts again)
    QUEUED -> REVERTING (cancelled before it ran)

A *delete* build tears an instance down, and is only ever driven forward:

    QUEUED -> DELETING -> DELETED | FAILED
    DELETING -> INTERRUPTED -> DELETING (a crash; recovery goes on deleting)

When a delete ends DELETED, the spawn builds it tore down go to DELETED too
(``TORN_DOWN``: ACTIVE, FAILED or RESOLVED -> DELETED), so the instance
shows as gone and may be built again.

Made only on an operator's word (``OPERATOR_TRANSITIONS``):

    spawn FAILED -> REVERTING (``build retry``: the rollback is tried again)
    delete FAILED -> DELETING (``build retry``: the delete is tried again)
    FAILED -> RESOLVED (``build resolve``: dealt with by hand)

It lives beside the event log because the log refuses any build transition
the table of the build's kind does not allow; the engine uses the same table
to decide.

``FINAL`` is "the agent never moves it on by itself": a state with no
transition in the agent's table of any kind. FAILED and ACTIVE stay final
although an operator or a delete may move them on, so recovery,
``UNFINISHED``, retention and the database's one-unfinished-build-per-instance
index never pick them up.
"""

from __future__ import annotations

from spawnflow.exceptions import IllegalTransition

SPAWN = "spawn"
DELETE = "delete"
KINDS = (SPAWN, DELETE)

QUEUED = "QUEUED"
RUNNING = "RUNNING"
ACTIVE = "ACTIVE"
REVERTING = "REVERTING"
ROLLED_BACK = "ROLLED_BACK"
FAILED = "FAILED"
INTERRUPTED = "INTERRUPTED"
RESOLVED = "RESOLVED"
DELETING = "DELETING"
DELETED = "DELETED"

Table = dict[str | None, frozenset[str]]

# What the agent (or queueing) does on its own, by kind of build.
TRANSITIONS: dict[str, Table] = {
    SPAWN: {
        None: frozenset({QUEUED}),
        QUEUED: frozenset({RUNNING, REVERTING}),
        RUNNING: frozenset({ACTIVE, REVERTING, INTERRUPTED}),
        INTERRUPTED: frozenset({RUNNING, REVERTING}),
        REVERTING: frozenset({ROLLED_BACK, FAILED, INTERRUPTED}),
        ACTIVE: frozenset(),
        ROLLED_BACK: frozenset(),
        FAILED: frozenset(),
        RESOLVED: frozenset(),
        DELETED: frozenset(),
    },
    DELETE: {
        None: frozenset({QUEUED}),
        QUEUED: frozenset({DELETING}),
        DELETING: frozenset({DELETED, FAILED, INTERRUPTED}),
        INTERRUPTED: frozenset({DELETING}),
        DELETED: frozenset(),
        FAILED: frozenset(),
        RESOLVED: frozenset(),
    },
}

# What only an operator's request makes happen (``spawnflow build retry|resolve``).
OPERATOR_TRANSITIONS: dict[str, Table] = {
    SPAWN: {FAILED: frozenset({REVERTING, RESOLVED})},
    DELETE: {FAILED: frozenset({DELETING, RESOLVED})},
}

# What a finished delete does to the spawn builds of its instance it tore down.
TORN_DOWN: Table = {
    ACTIVE: frozenset({DELETED}),
    FAILED: frozenset({DELETED}),
    RESOLVED: frozenset({DELETED}),
}

STATES = frozenset(s for table in TRANSITIONS.values() for s in table if s is not None)
FINAL = frozenset(s for s in STATES if not any(table.get(s) for table in TRANSITIONS.values()))


def _of(tables: dict[str, Table], kind: str) -> Table:
    try:
        return tables[kind]
    except KeyError:
        raise IllegalTransition(f"unknown kind of build {kind!r}") from None


def allowed(from_state: str | None, kind: str = SPAWN) -> frozenset[str]:
    """Every state ``from_state`` may go to, by the agent, an operator or a delete."""
    targets = _of(TRANSITIONS, kind).get(from_state, frozenset())
    targets |= _of(OPERATOR_TRANSITIONS, kind).get(from_state, frozenset())
    if kind == SPAWN:
        targets |= TORN_DOWN.get(from_state, frozenset())
    return targets


def by_operator(from_state: str | None, to_state: str, kind: str = SPAWN) -> bool:
    """True when only an operator's request makes ``from_state -> to_state``."""
    return to_state in _of(OPERATOR_TRANSITIONS, kind).get(from_state, frozenset())


def check(from_state: str | None, to_state: str, kind: str = SPAWN) -> None:
    """Raise IllegalTransition unless the table of ``kind`` allows from_state -> to_state."""
    if to_state not in allowed(from_state, kind):
        raise IllegalTransition(
            f"{kind} build transition {from_state} -> {to_state} is not allowed"
        )


def is_final(state: str) -> bool:
    return state in FINAL
