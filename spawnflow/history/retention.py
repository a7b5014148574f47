"""Retention: purge finished builds older than N days, in short batches.

    removed = purge(EventLog.open(url), older_than_days=30)

A build is purged with every row that belongs to it: its events, its
``builds`` row and its TaskFlow logbook/flow/atom projection rows. Only builds
in a final lifecycle state (``lifecycle.FINAL``) whose last change
(``updated_at``, the time they finished) is older than the cutoff are touched;
unfinished builds are never purged, however old. Each batch is its own short
write transaction, so an agent writing to the same database waits at most for
one batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import sqlalchemy as sa

from spawnflow.persistence import lifecycle
from spawnflow.persistence import tables as t
from spawnflow.persistence.eventlog import EventLog

DAY = 86400.0


def purge(
    eventlog: EventLog,
    older_than_days: float,
    batch_size: int = 500,
    now: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Delete finished builds that finished more than ``older_than_days`` ago.

    Returns how many builds were removed. ``progress(n)`` is called after each
    committed batch with the number removed so far.
    """
    if older_than_days < 0:
        raise ValueError("older_than_days must be >= 0")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    cutoff = (time.time() if now is None else now) - older_than_days * DAY
    final = sorted(lifecycle.FINAL)
    b = t.builds.c
    candidates = (
        sa.select(b.build_id)
        .where(b.state.in_(final), b.updated_at < cutoff)
        .order_by(b.updated_at, b.build_id)
        .limit(batch_size)
    )
    removed = 0
    while True:
        with eventlog.transaction() as conn:
            ids = [row.build_id for row in conn.execute(candidates)]
            if not ids:
                break
            conn.execute(sa.delete(t.events).where(t.events.c.build_id.in_(ids)))
            conn.execute(sa.delete(t.atomdetails).where(t.atomdetails.c.book_uuid.in_(ids)))
            conn.execute(sa.delete(t.flowdetails).where(t.flowdetails.c.book_uuid.in_(ids)))
            conn.execute(sa.delete(t.logbooks).where(t.logbooks.c.uuid.in_(ids)))
            conn.execute(sa.delete(t.builds).where(b.build_id.in_(ids), b.state.in_(final)))
        removed += len(ids)
        if progress is not None:
            progress(removed)
        if len(ids) < batch_size:
            break
    return removed


def count_purgeable(eventlog: EventLog, older_than_days: float, now: float | None = None) -> int:
    """How many builds ``purge`` would remove now (nothing is deleted)."""
    cutoff = (time.time() if now is None else now) - older_than_days * DAY
    b = t.builds.c
    query = (
        sa.select(sa.func.count())
        .select_from(t.builds)
        .where(b.state.in_(sorted(lifecycle.FINAL)), b.updated_at < cutoff)
    )
    with eventlog.engine.connect() as conn:
        return conn.execute(query).scalar_one()
