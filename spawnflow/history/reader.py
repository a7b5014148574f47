"""The history read API: what happened to a build, step by step, from the event log.

    from spawnflow.history import History
    with History.open("sqlite:////var/lib/spawnflow/spawnflow.sqlite") as history:
        for summary in history.builds(state="ROLLED_BACK", since="7d", limit=20):
            print(summary.build_id, summary.failed_step, summary.error)
        build = history.build(build_id)     # BuildHistory: .steps, .lifecycle, .diagnose()

One build is read by folding its events (``fold``). Listings read the
``builds`` projection (one row per build) and touch the events of the listed
page only.

Reads never take the SQLite write lock: ``History.open`` checks the schema
(refusing a missing, foreign or newer database) and then reads through its own
engine (``db.read_engine``), so an operator's query never stalls a running agent.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from spawnflow.exceptions import PersistenceError, UnknownBuild
from spawnflow.history.build import BuildHistory
from spawnflow.history.export import document
from spawnflow.history.fold import fold
from spawnflow.history.host_audit import last_findings
from spawnflow.history.model import AgentLease, BuildSummary, Event, Stats
from spawnflow.history.queries import build_filters, failures, summaries_query
from spawnflow.history.stats import stats
from spawnflow.persistence import db, lifecycle
from spawnflow.persistence import tables as t
from spawnflow.persistence.db import first_line
from spawnflow.persistence.eventlog import EventLog
from spawnflow.persistence.redact import mask_url


class History:
    """Read access to the history of builds in one event log database."""

    def __init__(self, eventlog: EventLog, owns: bool = False) -> None:
        self._log = eventlog
        self._owns = owns

    @classmethod
    def open(cls, db_url: str) -> History:
        """Open a history database for reading: it is never created or upgraded.

        Raises SchemaError for a missing/empty, foreign or newer database and
        PersistenceError when the database cannot be reached.
        """
        return cls(EventLog(db.read_engine(db_url)), owns=True)

    @property
    def engine(self) -> sa.Engine:
        return self._log.engine

    def close(self) -> None:
        if self._owns:
            self._log.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _connect(self) -> Any:
        try:
            return self.engine.connect()
        except sa.exc.OperationalError as exc:
            raise PersistenceError(
                f"cannot read {mask_url(str(self.engine.url))}: {first_line(exc)}"
            ) from None

    # -- one build ------------------------------------------------------------------

    def resolve(self, build_id: str, conn: sa.Connection | None = None) -> str:
        """The full id of the build ``build_id`` names (a full id or a unique prefix)."""
        prefix = (build_id or "").strip()
        if not prefix:
            raise UnknownBuild("empty build id")
        if conn is None:
            with self._connect() as own:
                return self.resolve(prefix, own)
        b = t.builds.c
        found = conn.execute(sa.select(b.build_id).where(b.build_id == prefix)).first()
        if found is not None:
            return str(found.build_id)
        if len(prefix) >= 36:
            raise UnknownBuild(f"no build {build_id} in this database")
        # A range (not LIKE) so that every backend uses the primary key index.
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        rows = conn.execute(
            sa.select(b.build_id)
            .where(b.build_id >= prefix, b.build_id < upper)
            .order_by(b.build_id)
            .limit(6)
        ).all()
        rows = [r for r in rows if r.build_id.startswith(prefix)]  # collations may differ
        if not rows:
            raise UnknownBuild(f"no build {build_id} in this database")
        if len(rows) > 1:
            shown = ", ".join(r.build_id[:13] for r in rows[:5])
            raise UnknownBuild(
                f"build id prefix {build_id!r} is ambiguous ({shown}"
                f"{', ...' if len(rows) > 5 else ''}); give more characters"
            )
        return str(rows[0].build_id)

    def _row_and_events(self, build_id: str) -> tuple[Any, list[Any]]:
        with self._connect() as conn:
            full = self.resolve(build_id, conn)
            row = conn.execute(sa.select(t.builds).where(t.builds.c.build_id == full)).first()
            events = list(
                conn.execute(
                    sa.select(t.events).where(t.events.c.build_id == full).order_by(t.events.c.seq)
                )
            )
        return row, events

    def build(self, build_id: str) -> BuildHistory:
        """Steps, lifecycle, external events and waits of one build (id or unique prefix)."""
        row, events = self._row_and_events(build_id)
        result = fold(row, events)
        if not result.is_final:
            result.agent = self.agent(result.host)
        if result.state == lifecycle.ACTIVE:
            with self._connect() as conn:
                result.audit = last_findings(conn, result.host, result.build_id)
        return result

    def agent(self, host: str) -> AgentLease | None:
        """The lease of the agent owning ``host`` (None: no agent has run, or no such table)."""
        agents = t.agents
        try:
            with self._connect() as conn:
                # Named columns: a database before 0006 lacks the lease identity ones.
                query = sa.select(
                    agents.c.host,
                    agents.c.agent_id,
                    agents.c.pid,
                    agents.c.started_at,
                    agents.c.heartbeat_at,
                ).where(agents.c.host == host)
                row = conn.execute(query).first()
        except sa.exc.OperationalError:
            return None  # a database from before the agents table
        except sa.exc.ProgrammingError:
            return None
        if row is None:
            return None
        return AgentLease(
            host=row.host,
            agent_id=row.agent_id,
            pid=row.pid,
            started_at=row.started_at,
            heartbeat_at=row.heartbeat_at,
        )

    def events(self, build_id: str) -> list[Event]:
        """The build's raw events in log order."""
        _row, events = self._row_and_events(build_id)
        return [
            Event(e.seq, e.ts, e.kind, e.name, e.from_state, e.to_state, e.payload, e.subject)
            for e in events
        ]

    def export(self, build_id: str) -> dict[str, Any]:
        """A self-contained JSON-able document of the build (see ``history.export``)."""
        row, events = self._row_and_events(build_id)
        return document(row, events, db.current_revision(self.engine))

    # -- many builds ----------------------------------------------------------------

    def builds(
        self,
        *,
        state: str | Iterable[str] | None = None,
        instance: str | None = None,
        host: str | None = None,
        since: Any = None,
        until: Any = None,
        failed_step: str | None = None,
        limit: int | None = 50,
        marker: str | None = None,
    ) -> list[BuildSummary]:
        """Builds newest first (created_at desc, build_id desc), filtered and paginated.

        ``state``: one state, a comma list or an iterable; ``instance``: uuid or name;
        ``since``/``until``: created at or after / before (see ``parse_time``);
        ``failed_step``: builds whose forward run failed at that step; ``marker``: the
        last build id of the previous page; ``limit``: page size (None: all).
        """
        b = t.builds.c
        query = summaries_query(
            build_filters(state=state, host=host, since=since, until=until),
            instance=instance,
            failed_step=failed_step,
        )
        if limit is not None and limit < 0:
            raise ValueError("limit must be >= 0")
        with self._connect() as conn:
            if marker:
                full = self.resolve(marker, conn)
                at = conn.execute(sa.select(b.created_at).where(b.build_id == full)).scalar_one()
                # The first term is a plain range, so the created_at index serves it.
                query = query.where(
                    b.created_at <= at, sa.or_(b.created_at < at, b.build_id < full)
                )
            query = query.order_by(b.created_at.desc(), b.build_id.desc())
            if limit:
                query = query.limit(limit)
            rows = list(conn.execute(query))
            failed = self._failed_steps(conn, [r.build_id for r in rows])
        return [
            BuildSummary(
                build_id=r.build_id,
                instance_uuid=r.instance_uuid,
                instance_name=r.instance_name,
                host=r.host,
                state=r.state,
                created_at=r.created_at,
                updated_at=r.updated_at,
                error=r.error,
                failed_step=failed.get(r.build_id),
            )
            for r in rows
        ]

    @staticmethod
    def _failed_steps(conn: sa.Connection, build_ids: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        e = t.events.c
        for start in range(0, len(build_ids), 500):
            chunk = build_ids[start : start + 500]
            query = (
                failures()
                .with_only_columns(e.build_id, e.name)
                .where(e.build_id.in_(chunk))
                .order_by(e.seq)
            )
            for row in conn.execute(query):
                found.setdefault(row.build_id, row.name)
        return found

    def stats(
        self,
        *,
        since: Any = None,
        until: Any = None,
        host: str | None = None,
        state: str | Iterable[str] | None = None,
    ) -> Stats:
        """Builds per lifecycle state, and per step p50/p95/max of forward and revert times.

        Reads every atom state change of the selected builds: narrow with
        ``since``/``until``/``host``/``state`` on a large log.
        """
        with self._connect() as conn:
            return stats(conn, since=since, until=until, host=host, state=state)
