"""TaskFlow state changes: which ones are legal, what each one was, which must be durable at once.

The backend checks every atom and flow save against TaskFlow's own
transition tables, plus the transitions TaskFlow's engines make without
listing them, before anything is written; an export's events are checked
against the same rules before an import.

What an atom event records beyond its from/to states is its *kind*, in the
payload's ``transition`` key:

* none: a step of a run or a revert that TaskFlow's tables list, or a revert
  of an atom that had not finished (``RUNNING``/``PENDING`` -> ``REVERTING``);
* ``reset``: the engine put the atom back to ``PENDING`` (or ``IGNORE``)
  from a state the tables do not go back from: ``engine.reset()``, a retry
  resetting its subflow, ``Storage.reset``. A reset is not a run;
* ``override``: a state set directly through TaskFlow's ``Storage`` that no
  engine sets (``PENDING`` -> ``SUCCESS``, to stage a crash, or an operator's
  repair). Refused unless the writing thread is inside ``overrides(reason)``;
  then recorded with ``reason``. Flows have no resets (the engine checks them
  against TaskFlow's table) but may be overridden the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from taskflow import exceptions as tf_exc
from taskflow import states

from spawnflow.exceptions import IllegalTransition

RESET = "reset"
OVERRIDE = "override"
KIND_KEY, REASON_KEY = "transition", "reason"
REASON_LEN = 255

# Reverting an atom that had not finished, which TaskFlow's tables do not
# list: recovery reverts an atom that was RUNNING when the agent died (the
# engine moves it straight to REVERTING), and an engine reverts a PENDING
# atom when a retry reset it between choosing it for a revert and reverting
# it (unordered flows with retries; TaskFlow bug 2043808).
_UNFINISHED_REVERTS = frozenset(
    {(states.RUNNING, states.REVERTING), (states.PENDING, states.REVERTING)}
)
# Runtime.reset_atoms moves an atom to one of these from whatever state it is in.
_RESET_TARGETS = frozenset({states.PENDING, states.IGNORE})

_scope = threading.local()


@contextmanager
def overrides(reason: str | None) -> Iterator[None]:
    """Let this thread's saves set states no engine sets, each recorded as an override.

    The reason (at most 255 characters) is stored with each override event,
    so the log says who forced a state and why. ``overrides(None)`` turns
    them off again inside an outer scope (an engine run in the middle of a
    repair is still checked). Other threads are never affected.
    """
    if reason is not None and not 0 < len(reason) <= REASON_LEN:
        raise ValueError(f"an override reason must be 1 to {REASON_LEN} characters")
    outer = getattr(_scope, "reason", None)
    _scope.reason = reason
    try:
        yield
    finally:
        _scope.reason = outer


def atom_kind(atom_type: str, old: str | None, new: str | None) -> str | None:
    """``None`` or ``RESET`` for an atom ``old -> new``; raise IllegalTransition otherwise."""
    if old == new or old is None or new is None:
        return None
    listed = (
        states.check_retry_transition
        if atom_type == "RETRY_DETAIL"
        else states.check_task_transition
    )
    if listed(old, new) or (old, new) in _UNFINISHED_REVERTS:
        return None
    if new in _RESET_TARGETS:
        return RESET
    raise IllegalTransition(f"atom transition {old} -> {new} is not allowed")


def flow_kind(old: str | None, new: str | None) -> None:
    """Raise IllegalTransition unless TaskFlow allows a flow ``old -> new`` (or ignores it)."""
    if old is None or new is None:
        return
    try:
        states.check_flow_transition(old, new)
    except tf_exc.InvalidState as exc:
        raise IllegalTransition(str(exc)) from None


def check_atom_transition(atom_type: str, old: str | None, new: str | None) -> None:
    """Raise IllegalTransition unless an engine may move an atom ``old -> new``."""
    atom_kind(atom_type, old, new)


def check_flow_transition(old: str | None, new: str | None) -> None:
    """Raise IllegalTransition unless TaskFlow allows a flow ``old -> new``."""
    flow_kind(old, new)


def atom_marker(atom_type: str, old: str | None, new: str | None) -> dict[str, str]:
    """The payload keys that say what an atom save's transition is (none for a run).

    Raises IllegalTransition for a transition no engine makes, unless this
    thread is inside ``overrides``.
    """
    return _marker(lambda: atom_kind(atom_type, old, new))


def flow_marker(old: str | None, new: str | None) -> dict[str, str]:
    """As ``atom_marker``, for a flow save: empty, or an override."""
    return _marker(lambda: flow_kind(old, new))


def _marker(kind_of: Callable[[], str | None]) -> dict[str, str]:
    try:
        kind = kind_of()
    except IllegalTransition:
        reason = getattr(_scope, "reason", None)
        if reason is None:
            raise
        return {KIND_KEY: OVERRIDE, REASON_KEY: reason}
    return {KIND_KEY: kind} if kind else {}


def check_recorded_atom(
    atom_type: str, old: str | None, new: str | None, payload: Mapping[str, Any]
) -> None:
    """An atom event read back (an import): its marker must be the one the backend writes."""
    _check_recorded(lambda: atom_kind(atom_type, old, new), payload)


def check_recorded_flow(old: str | None, new: str | None, payload: Mapping[str, Any]) -> None:
    """As ``check_recorded_atom``, for a flow event."""
    _check_recorded(lambda: flow_kind(old, new), payload)


def _check_recorded(kind_of: Callable[[], str | None], payload: Mapping[str, Any]) -> None:
    said, reason = payload.get(KIND_KEY), payload.get(REASON_KEY)
    if said == OVERRIDE:
        if not isinstance(reason, str) or not 0 < len(reason) <= REASON_LEN:
            raise IllegalTransition(f"an override must say why in 1 to {REASON_LEN} characters")
        try:
            kind = kind_of()
        except IllegalTransition:
            return  # forced, and says so
        raise IllegalTransition(
            f"recorded as an override, but an engine makes this transition ({kind or 'a run'})"
        )
    if reason is not None:
        raise IllegalTransition("only an override carries a reason")
    kind = kind_of()  # an illegal transition that is not marked as an override raises here
    if said != kind:
        raise IllegalTransition(f"recorded as {said or 'a run'}, but it is {kind or 'a run'}")


# An atom going to one of these announces work on the host: it is committed
# before TaskFlow goes on. A flow going to one of the others ends a run, and
# whoever ran it may act on that (or exit). Every other save may ride with the
# next commit: it announces nothing a crash could leave half-done (an
# override is committed at once too: whoever forced a state expects it kept).
DURABLE_STATES = frozenset({states.RUNNING, states.REVERTING})
FLOW_DURABLE_STATES = frozenset({states.SUCCESS, states.FAILURE, states.REVERTED, states.SUSPENDED})
