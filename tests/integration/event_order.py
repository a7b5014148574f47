"""Check one build's events, in seq order, against the lifecycle and TaskFlow's order.

Used after a fault under running builds (a database restart, a full disk):
each event must start where the build's, the flow's or the step's previous
event ended (nothing lost or reordered), every transition must be legal, a
step may start only when every earlier step succeeded and none after it has
started, a revert only when nothing after it is still done, and a step may
start (or revert) a second time only if it was RUNNING (or REVERTING) when
the build was interrupted.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from taskflow import states as tf

from spawnflow.flows.spawn import step_names
from spawnflow.persistence import lifecycle, transitions

STEPS = step_names()
# States a later step may be in when an earlier one starts reverting.
_UNDONE = frozenset({tf.PENDING, tf.REVERTED, tf.IGNORE})


class _Fold:
    def __init__(self) -> None:
        self.build: str | None = None
        self.flow: str | None = None
        self.atoms: dict[str, str] = {}
        self.types: dict[str, str] = {}
        self.entered: dict[tuple[str, str], int] = {}
        # Steps the last interruption caught in RUNNING / REVERTING: they may start again.
        self.may_repeat: set[tuple[str, str]] = set()
        self.log_faults: list[str] = []

    def build_event(self, event: Any) -> None:
        assert event.from_state == self.build, (event.seq, event.from_state, self.build)
        lifecycle.check(self.build, event.to_state)
        self.build = event.to_state
        if event.to_state == lifecycle.INTERRUPTED:
            self.may_repeat = {
                (name, state)
                for name, state in self.atoms.items()
                if state in (tf.RUNNING, tf.REVERTING)
            }
            reason = str((event.payload or {}).get("reason", ""))
            if "event log was unavailable" in reason:
                self.log_faults.append(reason)

    def flow_event(self, event: Any) -> None:
        assert event.from_state == self.flow, (event.seq, event.from_state, self.flow)
        transitions.check_flow_transition(self.flow, event.to_state)
        self.flow = event.to_state

    def atom_event(self, event: Any) -> None:
        name, old, new = event.name, event.from_state, event.to_state
        if old is None:
            self.types[name] = (event.payload or {})["type"]
        assert old == self.atoms.get(name), (event.seq, name, old, self.atoms.get(name))
        transitions.check_atom_transition(self.types[name], old, new)
        if new != old and new in (tf.RUNNING, tf.REVERTING):
            self.entering(name, new)
        self.atoms[name] = new

    def entering(self, name: str, state: str) -> None:
        index = STEPS.index(name)
        before = [self.atoms.get(s) for s in STEPS[:index]]
        after = [self.atoms.get(s) for s in STEPS[index + 1 :]]
        if state == tf.RUNNING:
            assert all(s == tf.SUCCESS for s in before), (name, "starts before", before)
            assert all(s == tf.PENDING for s in after), (name, "starts after", after)
        else:
            assert all(s in _UNDONE for s in after), (name, "reverts before", after)
        key = (name, state)
        if self.entered.get(key, 0) > 0:
            assert key in self.may_repeat, f"step {name} went {state} twice without a fault"
            self.may_repeat.discard(key)
        self.entered[key] = self.entered.get(key, 0) + 1


def check_build_events(events: Iterable[Any]) -> list[str]:
    """Assert the order of one build's events; return the reasons of its INTERRUPTED
    events that an unavailable log caused (empty: the build never noticed a fault)."""
    fold = _Fold()
    last_seq = 0
    for event in events:
        assert event.seq > last_seq
        last_seq = event.seq
        if event.kind == "build":
            fold.build_event(event)
        elif event.kind == "flow":
            fold.flow_event(event)
        elif event.kind == "atom":
            fold.atom_event(event)
    assert fold.build is not None and lifecycle.is_final(fold.build), fold.build
    return fold.log_faults
