"""The append-only event log and the projections kept beside it.

Every write is one transaction that appends an event and updates the
projection it affects, so the two never disagree; ``replay`` rebuilds the
projections from the events alone. The build lifecycle is checked here: an
illegal build transition raises and writes nothing.
"""

from __future__ import annotations

import time
from typing import Any, cast

import sqlalchemy as sa

from spawnflow.exceptions import PersistenceError, SchemaError, UnknownBuild
from spawnflow.persistence import db, lifecycle
from spawnflow.persistence import tables as t
from spawnflow.persistence.notify import notify_queued
from spawnflow.persistence.redact import mask_url, redact
from spawnflow.persistence.writer import LogWriter

# Event kinds.
BUILD = "build"
LOGBOOK = "logbook"
FLOW = "flow"
ATOM = "atom"
EXTERNAL = "external"


# Built once: constructing statements costs more than executing them here.
_INSERT_EVENT = sa.insert(t.events)


class EventLog(LogWriter):
    """One database: the writes that append events, and simple reads (see ``LogWriter``)."""

    @classmethod
    def open(cls, url: str, upgrade: bool = True) -> EventLog:
        """Open ``url``; an empty database is upgraded to head, a foreign or newer one refused.

        A malformed URL is a PersistenceError showing it masked (no password).
        """
        try:
            if not upgrade and db.inspect_url(url) is None:
                raise SchemaError(
                    f"{mask_url(url)} holds no spawnflow history (empty or missing database)"
                )
            return cls(db.open_engine(url, upgrade_schema=upgrade))
        except sa.exc.ArgumentError as exc:
            raise PersistenceError(f"not a database URL: {mask_url(url)} ({exc})") from None

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def append(
        conn: sa.Connection,
        *,
        kind: str,
        build_id: str | None,
        subject: str | None,
        name: str | None = None,
        from_state: str | None = None,
        to_state: str | None = None,
        payload: Any = None,
        ts: float | None = None,
        redacted: bool = False,
    ) -> int:
        """Append one event inside ``conn``'s transaction and return its sequence number.

        ``redacted=True`` says the payload was built from already redacted data.
        """
        result = conn.execute(
            _INSERT_EVENT,
            {
                "build_id": build_id,
                "ts": time.time() if ts is None else ts,
                "kind": kind,
                "subject": subject,
                "name": name,
                "from_state": from_state,
                "to_state": to_state,
                "payload": payload if redacted else redact(payload),
            },
        )
        # Never None after an insert (SQLAlchemy types it optional).
        return int(cast(Any, result.inserted_primary_key)[0])

    # -- builds -----------------------------------------------------------------

    def create_build(
        self,
        build_id: str,
        *,
        instance_uuid: str,
        instance_name: str,
        host: str,
        spec: dict[str, Any],
        flow_version: str | None = None,
        kind: str = lifecycle.SPAWN,
    ) -> None:
        """Record a new build in QUEUED; its first event carries the (redacted) spec,
        the version of the flow it will run (``flow_version``, if given) and, for
        any but a spawn build, its ``kind``."""
        lifecycle.check(None, lifecycle.QUEUED, kind)
        spec = redact(spec)
        now = time.time()
        payload: dict[str, Any] = {"spec": spec, "host": host, "instance_uuid": instance_uuid}
        if flow_version is not None:
            payload["flow_version"] = flow_version
        if kind != lifecycle.SPAWN:
            payload["kind"] = kind
        with self.transaction(build_id) as conn:
            seq = self.append(
                conn,
                kind=BUILD,
                build_id=build_id,
                subject=build_id,
                name=instance_name,
                to_state=lifecycle.QUEUED,
                ts=now,
                redacted=True,
                payload=payload,
            )
            conn.execute(
                sa.insert(t.builds).values(
                    build_id=build_id,
                    instance_uuid=instance_uuid,
                    instance_name=instance_name,
                    host=host,
                    state=lifecycle.QUEUED,
                    created_at=now,
                    updated_at=now,
                    spec=spec,
                    error=None,
                    last_seq=seq,
                    flow_version=flow_version,
                    kind=kind,
                )
            )
            notify_queued(conn, host, build_id)  # delivered on commit (PostgreSQL)

    def transition_build(
        self,
        build_id: str,
        to_state: str,
        *,
        error: str | None = None,
        payload: dict[str, Any] | None = None,
    ) -> str:
        """Move a build to ``to_state`` if the lifecycle allows it; return the old state."""
        with self.transaction(build_id) as conn:
            query = sa.select(t.builds.c.state, t.builds.c.instance_name, t.builds.c.kind).where(
                t.builds.c.build_id == build_id
            )
            if conn.dialect.name == "postgresql":
                query = query.with_for_update()
            row = conn.execute(query).first()
            if row is None:
                raise UnknownBuild(f"no build {build_id}")
            lifecycle.check(row.state, to_state, row.kind)
            body = dict(payload or {})
            if error is not None:
                body["error"] = error
            now = time.time()
            seq = self.append(
                conn,
                kind=BUILD,
                build_id=build_id,
                subject=build_id,
                name=row.instance_name,
                from_state=row.state,
                to_state=to_state,
                payload=body or None,
                ts=now,
            )
            values: dict[str, Any] = {"state": to_state, "updated_at": now, "last_seq": seq}
            if error is not None:
                values["error"] = error
            conn.execute(
                sa.update(t.builds).where(t.builds.c.build_id == build_id).values(**values)
            )
            return str(row.state)

    def get_build(self, build_id: str) -> sa.Row[Any]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t.builds).where(t.builds.c.build_id == build_id)).first()
        if row is None:
            raise UnknownBuild(f"no build {build_id} in this database")
        return row

    def builds(
        self,
        *,
        host: str | None = None,
        states: frozenset[str] | None = None,
        instance_uuid: str | None = None,
        kind: str | None = None,
    ) -> list[sa.Row[Any]]:
        query = sa.select(t.builds).order_by(t.builds.c.created_at)
        if kind is not None:
            query = query.where(t.builds.c.kind == kind)
        if host is not None:
            query = query.where(t.builds.c.host == host)
        if states is not None:
            query = query.where(t.builds.c.state.in_(sorted(states)))
        if instance_uuid is not None:
            query = query.where(t.builds.c.instance_uuid == instance_uuid)
        with self.engine.connect() as conn:
            return list(conn.execute(query))

    # -- external events (network-vif-plugged) ------------------------------------

    def record_external_event(self, build_id: str, name: str, tag: str, status: str) -> int:
        """Persist an external event before anyone acts on it (so none is lost)."""
        with self.transaction(build_id, from_outside=True) as conn:
            return self.append(
                conn,
                kind=EXTERNAL,
                build_id=build_id,
                subject=tag,
                name=name,
                to_state=status,
                payload={"tag": tag, "status": status},
            )

    def external_events(self, build_id: str) -> list[sa.Row[Any]]:
        query = (
            sa.select(t.events)
            .where(t.events.c.build_id == build_id, t.events.c.kind == EXTERNAL)
            .order_by(t.events.c.seq)
        )
        with self.engine.connect() as conn:
            return list(conn.execute(query))

    def events(self, build_id: str) -> list[sa.Row[Any]]:
        query = sa.select(t.events).where(t.events.c.build_id == build_id).order_by(t.events.c.seq)
        with self.engine.connect() as conn:
            return list(conn.execute(query))
