"""What operators did to a build (``build retry|resolve``), in words for the diagnosis.

    resolved by alice at 12:00:03: "removed the domain by hand"
    rollback retried by root (sudo: alice) at 12:01:10: "libvirtd restarted"

Read from the build's lifecycle transitions that only an operator makes
(``lifecycle.OPERATOR_TRANSITIONS``): their payload carries who asked and the
note, as ``engine.operator`` wrote them.
"""

from __future__ import annotations

from spawnflow.history.model import BuildRecord, Transition
from spawnflow.history.times import clock
from spawnflow.persistence import lifecycle


def _who(detail: dict[str, object]) -> str:
    user = str(detail.get("user") or "an operator")
    sudo = detail.get("sudo_user")
    return f"{user} (sudo: {sudo})" if sudo else user


def _said(change: Transition) -> str:
    detail = change.detail or {}
    note = detail.get("note")
    verb = "resolved" if change.to_state == lifecycle.RESOLVED else "rollback retried"
    text = f"{verb} by {_who(detail)} at {clock(change.at)}"
    return f'{text}: "{note}"' if note else text


def operator_changes(build: BuildRecord) -> list[Transition]:
    """The build's transitions made on an operator's word, oldest first."""
    return [
        change
        for change in build.lifecycle
        if lifecycle.by_operator(change.from_state, change.to_state)
    ]


def operator_text(build: BuildRecord) -> str:
    """Every retry and resolve of the build, joined; empty when there was none."""
    return "; ".join(_said(change) for change in operator_changes(build))


__all__ = ["operator_changes", "operator_text"]
