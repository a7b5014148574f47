"""TaskFlow state changes: which ones are legal, and which ones must be durable at once.

The backend checks every atom and flow save against TaskFlow's own
transition tables (plus the one recovery needs) before anything is written;
an export's events are checked against the same rules before an import.
"""

from __future__ import annotations

from taskflow import exceptions as tf_exc
from taskflow import states

from spawnflow.exceptions import IllegalTransition

# Recovery reverts an atom that was RUNNING when the agent died (TaskFlow moves
# it straight to REVERTING), which TaskFlow's own table does not list.
_RECOVERY_ATOM_TRANSITIONS = frozenset({(states.RUNNING, states.REVERTING)})


def check_atom_transition(atom_type: str, old: str | None, new: str | None) -> None:
    """Raise IllegalTransition unless TaskFlow (or recovery) allows an atom ``old -> new``."""
    if old == new or old is None or new is None:
        return
    allowed = (
        states.check_retry_transition
        if atom_type == "RETRY_DETAIL"
        else states.check_task_transition
    )
    if not allowed(old, new) and (old, new) not in _RECOVERY_ATOM_TRANSITIONS:
        raise IllegalTransition(f"atom transition {old} -> {new} is not allowed")


def check_flow_transition(old: str | None, new: str | None) -> None:
    """Raise IllegalTransition unless TaskFlow allows a flow ``old -> new``."""
    if old is None or new is None:
        return
    try:
        states.check_flow_transition(old, new)
    except tf_exc.InvalidState as exc:
        raise IllegalTransition(str(exc)) from None


# An atom going to one of these announces work on the host: it is committed
# before TaskFlow goes on. A flow going to one of the others ends a run, and
# whoever ran it may act on that (or exit). Every other save may ride with the
# next commit: it announces nothing a crash could leave half-done.
DURABLE_STATES = frozenset({states.RUNNING, states.REVERTING})
FLOW_DURABLE_STATES = frozenset({states.SUCCESS, states.FAILURE, states.REVERTED, states.SUSPENDED})
