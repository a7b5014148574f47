"""Build counts per lifecycle state and step duration percentiles over many builds.

Reads every atom state change of the selected builds, streamed, and pairs
each run or revert start with its end by the fold's rule (``fold.span_edge``),
so a duration here is the same span the history of one build shows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from taskflow import states as tf_states

from spawnflow.history.fold import SPAN_STATES, span_edge
from spawnflow.history.model import FORWARD, Stats, StepStats
from spawnflow.history.queries import build_filters
from spawnflow.persistence import tables as t
from spawnflow.persistence.eventlog import ATOM


def percentile(ordered: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) of sorted values, linear between closest ranks."""
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class _Durations:
    """Finished spans per step name, paired per atom (``subject``) as rows stream by."""

    def __init__(self) -> None:
        self.forward: dict[str, list[float]] = {}
        self.reverts: dict[str, list[float]] = {}
        self.failures: dict[str, int] = {}
        self._open: dict[tuple[str, str], float] = {}

    def add(self, row: Any) -> None:
        name = row.name or "?"
        self.forward.setdefault(name, [])
        edge = span_edge(row.to_state)
        if edge is None:
            return
        phase, opens = edge
        key = (row.subject, phase)
        if opens:
            self._open[key] = row.ts
            return
        begun = self._open.pop(key, None)
        if begun is not None:
            spans = self.forward if phase == FORWARD else self.reverts
            spans.setdefault(name, []).append(row.ts - begun)
        if row.to_state == tf_states.FAILURE:
            self.failures[name] = self.failures.get(name, 0) + 1

    def steps(self) -> list[StepStats]:
        steps = []
        for name, values in self.forward.items():
            values.sort()
            back = sorted(self.reverts.get(name, []))
            steps.append(
                StepStats(
                    name=name,
                    runs=len(values),
                    failures=self.failures.get(name, 0),
                    p50=percentile(values, 50),
                    p95=percentile(values, 95),
                    max=values[-1] if values else None,
                    reverts=len(back),
                    revert_p50=percentile(back, 50),
                    revert_p95=percentile(back, 95),
                )
            )
        return steps


def stats(
    conn: sa.Connection,
    *,
    since: Any = None,
    until: Any = None,
    host: str | None = None,
    state: str | Iterable[str] | None = None,
) -> Stats:
    """Builds per lifecycle state, and per step p50/p95/max of forward and revert times."""
    b, e = t.builds.c, t.events.c
    where = build_filters(state=state, host=host, since=since, until=until)
    counts_q = sa.select(b.host, b.state, sa.func.count()).where(*where).group_by(b.host, b.state)
    steps_q = (
        sa.select(e.subject, e.name, e.from_state, e.to_state, e.ts)
        .where(
            e.kind == ATOM,
            e.to_state.in_(sorted(SPAN_STATES)),
            sa.or_(e.from_state.is_(None), e.from_state != e.to_state),
        )
        .order_by(e.seq)
    )
    if where:
        steps_q = steps_q.where(e.build_id.in_(sa.select(b.build_id).where(*where)))
    durations = _Durations()
    counts: dict[str, int] = {}
    hosts: dict[str, dict[str, int]] = {}
    for host_name, state_name, n in conn.execute(counts_q):
        counts[state_name] = counts.get(state_name, 0) + n
        hosts.setdefault(host_name, {})[state_name] = n
    for row in conn.execution_options(yield_per=5000).execute(steps_q):
        durations.add(row)
    ordered = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return Stats(builds=ordered, steps=durations.steps(), hosts=dict(sorted(hosts.items())))
