"""One TaskFlow save, staged: the events it appends and the projection rows it changes.

A save is staged whole before any of it is queued or committed, so a save
that fails (an illegal transition, a value that cannot be stored) writes
nothing; see ``backend``.
"""

from __future__ import annotations

import time
from typing import Any

from taskflow.persistence import models

from spawnflow.persistence import tables as t
from spawnflow.persistence.batch import PROJECTIONS, encode
from spawnflow.persistence.cache import CachedAtom, CachedFlow


def diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    changed = {k: v for k, v in new.items() if k not in old or old[k] != v}
    gone = [k for k in old if k not in new]
    out: dict[str, Any] = {}
    if changed:
        out["set"] = changed
    if gone:
        out["unset"] = gone
    return out


def merge_atom(old: CachedAtom, incoming: models.AtomDetail) -> models.AtomDetail:
    """``old`` merged with ``incoming``, as TaskFlow's own backends do.

    A TaskDetail's merge overwrites every persisted field with the incoming
    one, so the incoming detail *is* the merge (and rebuilding the old one from
    the cache would only cost a deep copy); retries merge their history.
    """
    if old.atom_type == models.atom_detail_type(incoming) == "TASK_DETAIL":
        return incoming
    return old.detail().merge(incoming)


class Changes:
    """One save, staged: its events, projection rows and cache entries."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.rows: list[tuple[str, bool, dict[str, Any]]] = []
        self.atoms: dict[str, CachedAtom] = {}
        self.flows: dict[str, CachedFlow] = {}
        self.durable = False

    def event(
        self,
        *,
        kind: str,
        build_id: str,
        subject: str,
        name: str | None,
        from_state: str | None,
        to_state: str | None,
        payload: Any,
    ) -> None:
        # Encoded now: a value that cannot be stored fails this save, not a later commit.
        self.events.append(
            {
                "build_id": build_id,
                "ts": time.time(),
                "kind": kind,
                "subject": subject,
                "name": name,
                "from_state": from_state,
                "to_state": to_state,
                "payload": t.dump_json(payload),
            }
        )

    def row(self, table: str, insert: bool, row: dict[str, Any]) -> None:
        self.rows.append((table, insert, encode(row, PROJECTIONS[table])))
