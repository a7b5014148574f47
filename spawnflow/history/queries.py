"""Query pieces shared by the ``History`` listing and ``stats``: filters on ``builds``."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from taskflow import states as tf_states

from spawnflow.history.times import parse_time
from spawnflow.persistence import lifecycle
from spawnflow.persistence import tables as t
from spawnflow.persistence.eventlog import ATOM


def build_filters(
    *, state: str | Iterable[str] | None, host: str | None, since: Any, until: Any
) -> list[sa.ColumnElement[bool]]:
    """The ``builds`` terms shared by ``History.builds`` and ``History.stats``."""
    b = t.builds.c
    where: list[sa.ColumnElement[bool]] = []
    wanted = states(state)
    if wanted:
        where.append(b.state.in_(wanted))
    if host:
        where.append(b.host == host)
    start, end = parse_time(since), parse_time(until)
    if start is not None:
        where.append(b.created_at >= start)
    if end is not None:
        where.append(b.created_at < end)
    return where


def summaries_query(
    where: list[sa.ColumnElement[bool]], *, instance: str | None, failed_step: str | None
) -> sa.Select[Any]:
    """The ``builds`` columns of a listing, filtered by ``where``, an instance and a failed step.

    ``instance``: a uuid is looked up by the indexed column only; anything else is a name.
    """
    b, e = t.builds.c, t.events.c
    query = sa.select(
        b.build_id,
        b.instance_uuid,
        b.instance_name,
        b.host,
        b.state,
        b.created_at,
        b.updated_at,
        b.error,
    ).where(*where)
    if instance:
        query = query.where(
            b.instance_uuid == instance.lower()
            if is_uuid(instance)
            else b.instance_name == instance
        )
    if failed_step:
        query = query.where(
            b.build_id.in_(failures().with_only_columns(e.build_id).where(e.name == failed_step))
        )
    return query


def failures() -> sa.Select[tuple[str]]:
    """Forward step failures. Constants are inlined (not bound) so that a partial
    index on exactly these terms can serve the query."""
    e = t.events.c
    return sa.select(e.build_id).where(
        e.kind == sa.literal_column(f"'{ATOM}'"),
        e.to_state == sa.literal_column(f"'{tf_states.FAILURE}'"),
    )


def states(value: str | Iterable[str] | None) -> list[str] | None:
    """Build states from one state, a comma list or an iterable; ValueError for an unknown one."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    wanted = sorted(
        {part.strip().upper() for item in items for part in item.split(",") if part.strip()}
    )
    unknown = [s for s in wanted if s not in lifecycle.STATES]
    if unknown:
        raise ValueError(
            f"unknown build state(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(lifecycle.STATES))}"
        )
    return wanted or None


def is_uuid(text: str) -> bool:
    """True when ``text`` is a uuid in canonical form (any case)."""
    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False
